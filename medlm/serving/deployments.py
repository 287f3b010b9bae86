"""The model deployments: SpeechEncoder, LLM and CTRetriever.

How the SpeechLM is split: the encoder deployment owns the audio path (front end -> Whisper/wav2vec2
encoder -> frame-stacking adapter) and turns each waveform into its adapter-space embeddings (n_i, D),
batching waveforms of concurrent requests into one encoder forward (``@serve.batch``). The LLM deployment
owns the tokenizer and the causal LLM: it renders the chat with one ``<|audio|>`` placeholder per audio
part, splices the precomputed embeddings in (``replace_placeholders_and_build_targets``) and generates with
the KV cache for a whole batch of requests at once, streaming tokens per request. Requests for different
LoRA adapters (``@serve.multiplexed``, selected by the OpenAI ``model`` field) land in different batches.
Both load the same training-run export (local dir or ``s3://``); only ``D`` floats per audio token cross
between them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ray import serve

from medlm import storage
from medlm.serving.adapters import activate_adapter, list_adapters, load_adapter, unload_adapter
from medlm.serving.config import BatchOptions
from medlm.serving.errors import APIError
from medlm.serving.schemas import CTHit, LabelScore, Usage

log = logging.getLogger("medlm.serving")


def load_speechlm(model_dir: str):
    """A training run's export (``SpeechLM.save_pretrained`` + processor), local or ``s3://``, in eval mode."""
    from medlm.models import SpeechLM, SpeechLMProcessor

    local = storage.local_copy(model_dir)
    model = SpeechLM.from_pretrained(local).eval()
    return model, SpeechLMProcessor.from_pretrained(local)


class BatchStats:
    """Histogram of batch sizes (what ``stats()`` reports; the benchmark and tests read it)."""

    def __init__(self):
        self.sizes: Counter[int] = Counter()

    def add(self, n: int) -> None:
        self.sizes[n] += 1

    def report(self) -> dict[str, Any]:
        batches = sum(self.sizes.values())
        items = sum(k * v for k, v in self.sizes.items())
        return {"batches": batches, "items": items, "max_batch": max(self.sizes, default=0),
                "mean_batch": items / batches if batches else 0.0, "sizes": dict(self.sizes)}


# --- speech encoder ------------------------------------------------------------------------------------------

@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.25},
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8})
class SpeechEncoder:
    """Waveforms -> adapter-space audio embeddings, dynamically batched across requests."""

    def __init__(self, model_dir: str, batching: BatchOptions | None = None):
        model, _ = load_speechlm(model_dir)
        model.llm = None  # this replica only runs the audio path
        self.model = model
        self.stats = BatchStats()
        batching = batching or BatchOptions()
        self.embed.set_max_batch_size(batching.max_batch_size)
        self.embed.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def embed(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        self.stats.add(len(waves))
        return await asyncio.to_thread(self._embed, waves)

    @torch.inference_mode()
    def _embed(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        feats, chunks, lengths = self.model.frontend.features(waves, return_lengths=True)
        out = self.model.embed_audio(torch.from_numpy(feats), torch.tensor(chunks), torch.tensor(lengths))
        return [e.float().numpy() for e in out]

    def ready(self) -> bool:
        return True

    def batch_stats(self) -> dict[str, Any]:
        return self.stats.report()


# --- ASR baseline ----------------------------------------------------------------------------------------------

@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.25},
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8})
class WhisperTranscriber:
    """A Whisper checkpoint's own encoder-decoder (``/v1/audio/transcriptions`` with its name as ``model``):
    the ASR a user would pick instead of the SpeechLM, dynamically batched across requests."""

    def __init__(self, model: str, batching: BatchOptions | None = None):
        from medlm.models.baselines import WhisperASR

        self.asr = WhisperASR(model)
        self.stats = BatchStats()
        batching = batching or BatchOptions()
        self.transcribe.set_max_batch_size(batching.max_batch_size)
        self.transcribe.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def transcribe(self, waves: list[np.ndarray]) -> list[str]:
        self.stats.add(len(waves))
        return await asyncio.to_thread(self.asr.transcribe, waves)

    def ready(self) -> bool:
        return True

    def batch_stats(self) -> dict[str, Any]:
        return self.stats.report()


# --- LLM -------------------------------------------------------------------------------------------------------

@dataclass
class GenerationRequest:
    """Chat messages whose audio parts are ``{"type": "audio_embeds", "embeds": (n, D) array}``."""

    messages: list[dict[str, Any]]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass
class GenerationChunk:
    text: str
    finish_reason: str | None = None  # set on the last chunk: "stop" | "length"
    usage: Usage | None = None        # set on the last chunk


@dataclass
class _Prompt:
    ids: list[int]
    audio: list[np.ndarray]
    request: GenerationRequest
    state: dict = field(default_factory=dict)


class _RowSampling:
    """Per-row temperature / top-p in one batched ``generate`` (temperature 0 = greedy for that row)."""

    def __init__(self, temperatures: list[float], top_ps: list[float]):
        self.t = torch.tensor(temperatures).unsqueeze(1)
        self.p = torch.tensor(top_ps).unsqueeze(1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        greedy = (self.t == 0).squeeze(1)
        scores = scores / self.t.clamp(min=1e-5).to(scores.dtype)
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        drop = (cum - sorted_scores.softmax(-1)) > self.p.to(scores.dtype)  # keep the smallest set above p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_scores)
        if greedy.any():  # all mass on the argmax: sampling then returns it
            top = scores[greedy].argmax(-1, keepdim=True)
            scores[greedy] = torch.full_like(scores[greedy], float("-inf")).scatter(-1, top, 0.0)
        return scores


class _RowLimits:
    """Stop each row at its own ``max_new_tokens`` (HF stops a row when its criterion is true)."""

    def __init__(self, limits: list[int]):
        self.limits = torch.tensor(limits)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), input_ids.shape[1]) >= self.limits


class _QueueStreamer:
    """HF streamer -> an asyncio queue of per-step token tensors (None when generation ends)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self.loop, self.queue = loop, queue

    def put(self, value: torch.Tensor) -> None:
        if value.dim() == 1:  # a decoding step: one token per row (the prompt arrives as 2-D and is skipped)
            self.loop.call_soon_threadsafe(self.queue.put_nowait, value.tolist())

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


def render_prompt(processor, messages: list[dict[str, Any]]) -> tuple[list[int], list[np.ndarray]]:
    """Chat -> prompt token ids + audio embeddings: ``SpeechLMProcessor.render_prompt`` (the rendering the
    model was trained with), bad input as a 400."""
    try:
        return processor.render_prompt(messages)
    except ValueError as e:
        raise APIError(400, str(e), param="messages", code="invalid_request") from None


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.25},
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8})
class LLM:
    """Batched, streamed, KV-cached generation from spliced audio embeddings; LoRA adapters multiplexed."""

    def __init__(self, model_dir: str, served_model_name: str = "medlm", adapters_dir: str | None = None,
                 batching: BatchOptions | None = None):
        self.model, self.processor = load_speechlm(model_dir)
        self.model.encoder = None  # this replica only runs the LLM (the adapter stays: it is tiny)
        self.tokenizer = self.processor.tokenizer
        self.audio_token_id = self.processor.audio_token_id
        self.max_positions = getattr(self.model.config.text_config, "max_position_embeddings", 4096)
        self.served_model_name = served_model_name
        self.adapters_dir = adapters_dir
        self.stats = BatchStats()
        self.lock = threading.Lock()  # one generate at a time per replica (adapters are replica-global)
        batching = batching or BatchOptions()
        self._batch.set_max_batch_size(batching.max_batch_size)
        self._batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    def ready(self) -> bool:
        return True

    def batch_stats(self) -> dict[str, Any]:
        return self.stats.report()

    def model_ids(self) -> list[str]:
        return [self.served_model_name, *list_adapters(self.adapters_dir)]

    # --- adapters ---

    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_adapter(self, model_id: str) -> _LoadedAdapter:
        if model_id == self.served_model_name:
            return _LoadedAdapter(self.model, None, self.lock)
        if model_id not in list_adapters(self.adapters_dir):
            raise APIError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
        await asyncio.to_thread(self._load_adapter, model_id)
        return _LoadedAdapter(self.model, model_id, self.lock)

    def _load_adapter(self, model_id: str) -> None:
        with self.lock:  # never change the LoRA layers while a batch generates
            load_adapter(self.model, storage.join(self.adapters_dir, model_id), model_id)

    # --- generation ---

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream one request's completion; requests are batched underneath (``_batch``)."""
        ids, audio = render_prompt(self.processor, request.messages)
        prompt_len = len(ids) - len(audio) + sum(len(a) for a in audio)
        if prompt_len + request.max_new_tokens > self.max_positions:
            raise APIError(400, f"prompt ({prompt_len} tokens) + max_tokens ({request.max_new_tokens}) exceeds the "
                           f"model's context of {self.max_positions} tokens", param="messages",
                           code="context_length_exceeded")
        await self.get_adapter(serve.get_multiplexed_model_id() or self.served_model_name)
        async for chunk in self._batch(_Prompt(ids, audio, request)):
            yield chunk

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _batch(self, prompts: list[_Prompt]) -> AsyncIterator[list[GenerationChunk | type[StopIteration]]]:
        self.stats.add(len(prompts))
        adapter = await self.get_adapter(serve.get_multiplexed_model_id() or self.served_model_name)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        worker = loop.run_in_executor(None, self._generate, prompts, adapter.name, _QueueStreamer(loop, queue))
        tokens: list[list[int]] = [[] for _ in prompts]
        sent = [""] * len(prompts)
        done = [False] * len(prompts)
        eos = self.tokenizer.eos_token_id
        while (step := await queue.get()) is not None:
            out: list[GenerationChunk | type[StopIteration]] = []
            for i, (p, tok) in enumerate(zip(prompts, step)):
                if done[i]:
                    out.append(StopIteration)
                    continue
                finish = None
                if tok == eos:
                    finish = "stop"
                else:
                    tokens[i].append(tok)
                    if len(tokens[i]) >= p.request.max_new_tokens:
                        finish = "length"
                text = self.tokenizer.decode(tokens[i], skip_special_tokens=True)
                delta = ""
                if finish or not text.endswith("\ufffd"):  # hold back a partly decoded character
                    delta, sent[i] = text[len(sent[i]):], text
                out.append(self._chunk(p, tokens[i], delta, finish) if finish else GenerationChunk(delta))
                done[i] = finish is not None
            yield out
        await worker
        if not all(done):  # generation ended without eos for some rows (e.g. every row hit its limit)
            yield [StopIteration if done[i] else self._chunk(p, tokens[i], "", "length")
                   for i, p in enumerate(prompts)]

    def _chunk(self, p: _Prompt, tokens: list[int], delta: str, finish: str) -> GenerationChunk:
        prompt_tokens = len(p.ids) - len(p.audio) + sum(len(a) for a in p.audio)
        return GenerationChunk(delta, finish, Usage(prompt_tokens=prompt_tokens, completion_tokens=len(tokens),
                                                    total_tokens=prompt_tokens + len(tokens)))

    @torch.inference_mode()
    def _generate(self, prompts: list[_Prompt], adapter: str | None, streamer: _QueueStreamer) -> None:
        from medlm.models import replace_placeholders_and_build_targets

        try:
            # +1 column of left padding on every row, so the splice keeps rows left-padded even when no
            # prompt needed padding but their audio lengths differ.
            width = max(len(p.ids) for p in prompts) + 1
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([[pad] * (width - len(p.ids)) + p.ids for p in prompts])
            mask = torch.tensor([[0] * (width - len(p.ids)) + [1] * len(p.ids) for p in prompts])
            emb_layer = self.model.get_input_embeddings()
            text_embeds = emb_layer(ids.masked_fill(ids == self.audio_token_id, 0))
            audio = [torch.tensor(a) for p in prompts for a in p.audio]
            embeds, mask, _ = replace_placeholders_and_build_targets(ids, mask, text_embeds, audio,
                                                                     self.audio_token_id)
            reqs = [p.request for p in prompts]
            with self.lock:
                activate_adapter(self.model, adapter)
                self.model.llm.generate(
                    inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max(r.max_new_tokens for r in reqs),
                    do_sample=True, logits_processor=[_RowSampling([r.temperature for r in reqs],
                                                                   [r.top_p for r in reqs])],
                    stopping_criteria=[_RowLimits([r.max_new_tokens for r in reqs])],
                    top_k=0, pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id, streamer=streamer)
        finally:
            streamer.end()


class _LoadedAdapter:
    """What the multiplexed loader caches: a LoRA adapter inside the replica's model (None = base)."""

    def __init__(self, model, name: str | None, lock: threading.Lock):
        self.model, self.name, self.lock = model, name, lock

    def __del__(self):  # Serve calls this (in a thread) when it evicts the adapter
        if self.name is not None:
            with self.lock:
                unload_adapter(self.model, self.name)
            self.name = None


# --- CT retriever ---------------------------------------------------------------------------------------------

@serve.deployment(max_ongoing_requests=8, ray_actor_options={"num_cpus": 0.25},
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4})
class CTRetriever:
    """An index of CT volume embeddings: search by a written or spoken report, zero-shot finding scores."""

    def __init__(self, index_dir: str):
        from medlm.ct import CTIndex

        self.index = CTIndex.load(storage.local_copy(index_dir))

    def ready(self) -> bool:
        return True

    @torch.inference_mode()  # grad mode is per thread and Serve runs these in its thread pool
    def search(self, kind: str, query: str | np.ndarray, k: int) -> list[CTHit]:
        hits = self.index.search_text(query, k) if kind == "text" else self.index.search_audio(query, k)
        return [CTHit(id=i, score=score) for i, score in hits]

    @torch.inference_mode()
    def classify(self, kind: str, query: str | np.ndarray, labels: list[str] | None) -> list[LabelScore]:
        unknown = sorted(set(labels or ()) - set(self.index.classes))
        if unknown:
            raise APIError(400, f"unknown labels {unknown}; known: {list(self.index.classes)}", param="labels",
                           code="invalid_labels")
        return [LabelScore(label=k, score=v) for k, v in self.index.classify(query, labels).items()]
