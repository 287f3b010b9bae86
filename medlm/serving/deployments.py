"""The model deployments: SpeechEncoder, LLM, WhisperTranscriber, Speaker and CTRetriever.

How the SpeechLM is split: the encoder deployment owns the audio path (front end -> Whisper/wav2vec2
encoder -> frame-stacking adapter) and turns each waveform into its adapter-space embeddings (n_i, D),
batching waveforms of concurrent requests into one encoder forward (``@serve.batch``). The LLM deployment
owns the tokenizer and the causal LLM: it renders the chat with one ``<|audio|>`` placeholder per audio
part, splices the precomputed embeddings in (``replace_placeholders_and_build_targets``) and decodes every
request in one running batch (continuous batching over the KV cache, ``medlm.serving.generation``),
streaming tokens per request. Requests for different LoRA adapters (``@serve.multiplexed``, selected by the
OpenAI ``model`` field) wait for the running batch of another adapter to drain. Each loads only its part of
the training-run export (local dir or ``s3://``: ``model-audio.safetensors`` / ``model-llm.safetensors``);
only ``D`` floats per audio token cross between them. The Speaker turns reply sentences into speech.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray import serve

from medlm import storage
from medlm.models.modeling import EXPORT_PARTS
from medlm.serving.adapters import activate_adapter, list_adapters, load_adapter, unload_adapter
from medlm.serving.config import BatchOptions, GenerationOptions, SpeechOptions
from medlm.serving.errors import APIError
from medlm.serving.schemas import CTHit, LabelScore, Usage

log = logging.getLogger("medlm.serving")


class BatchStats:
    """Histogram of batch sizes: this replica's (what ``report()`` gives; the benchmark and tests read it
    through ``batch_stats``) and, with ``export``, Ray's ``medlm_batch_size`` metric
    (``medlm.serving.metrics``)."""

    def __init__(self, export: bool = False):
        from medlm.serving.metrics import batch_size_histogram

        self.sizes: Counter[int] = Counter()
        self.histogram = batch_size_histogram() if export else None

    def add(self, n: int) -> None:
        self.sizes[n] += 1
        if self.histogram is not None:
            self.histogram.observe(n)

    def report(self) -> dict[str, Any]:
        batches = sum(self.sizes.values())
        items = sum(k * v for k, v in self.sizes.items())
        return {
            "batches": batches,
            "items": items,
            "max_batch": max(self.sizes, default=0),
            "mean_batch": items / batches if batches else 0.0,
            "sizes": dict(self.sizes),
        }


class BatchedReplica:
    """What the ``@serve.batch`` deployments share: their batch-size histogram and the batching options
    applied to their batched method (``max_batch_size: 1`` turns batching off). The ``@serve.batch``
    decorators carry no sizes: each deployment's come from its own ``AppArgs.*_batching``."""

    def _batch_with(self, method, batching: BatchOptions | None) -> None:
        self.stats = BatchStats(export=True)
        batching = batching or BatchOptions()
        method.set_max_batch_size(batching.max_batch_size)
        method.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    def ready(self) -> bool:
        return True

    def batch_stats(self) -> dict[str, Any]:
        return self.stats.report()


# --- speech encoder -----------------------------------------------------------------------------------------


@dataclass
class EncodedAudio:
    """One waveform as the SpeechEncoder replica returns it: the adapter's audio tokens and, when the app
    screens turns (``SafetyOptions.triage_dir``), the safety screen's label of the audio."""

    tokens: np.ndarray
    screen: str | None = None


@serve.deployment  # options: medlm.serving.config.DEPLOYMENTS (applied by build_app)
class SpeechEncoder(BatchedReplica):
    """Waveforms -> the adapter's audio tokens (``SpeechLM.audio_tokens``), dynamically batched across
    requests; the LLM replica compresses them where the model does (``audio_compression``: it needs the
    LLM's embedding table). With a triage export it also screens each waveform from the same encoder frames
    (the head alone: no second encoder pass) and screens typed turns (``screen_text``)."""

    def __init__(self, model_dir: str, batching: BatchOptions | None = None, triage_dir: str | None = None):
        from medlm.models import SpeechLM

        local = storage.local_copy(model_dir, exclude=(EXPORT_PARTS["llm"][0],))
        self.model = SpeechLM.from_pretrained_part(local, "audio")  # never reads the LLM's weights
        self.screen = load_screen(triage_dir, self.model) if triage_dir else None
        self._batch_with(self.embed, batching)

    @serve.batch  # sizes: set in __init__ (_batch_with)
    async def embed(self, waves: list[np.ndarray]) -> list[EncodedAudio]:
        self.stats.add(len(waves))
        return await asyncio.to_thread(self._embed, waves)

    @torch.inference_mode()
    def _embed(self, waves: list[np.ndarray]) -> list[EncodedAudio]:
        from medlm.models.triage import frames_by_item

        feats, chunks, lengths = self.model.frontend.features(waves, return_lengths=True)
        frames = (
            self.model.encoder_frames(torch.from_numpy(feats), torch.tensor(lengths)) if len(feats) else []
        )
        tokens = [t.float().numpy() for t in self.model.adapt(frames, chunks)]
        if self.screen is None:
            return [EncodedAudio(t) for t in tokens]
        per_item = frames_by_item(frames, chunks, self.model.config.encoder_config.hidden_size)
        probs = self.screen.audio_probs(per_item)
        return [EncodedAudio(t, self.screen.model.decide(p, "audio")) for t, p in zip(tokens, probs)]

    def screen_text(self, text: str) -> str | None:
        """The safety screen's label of a typed turn (None: this app does not screen)."""
        if self.screen is None:
            return None
        return self.screen.model.decide(self.screen.text_probs([text])[0], "text")


def load_screen(triage_dir: str, model):
    """The triage export at ``triage_dir`` for this replica's encoder; refused if the screen's audio branch
    was trained on another encoder's frames."""
    from medlm.models.encoder import encoder_fingerprint
    from medlm.models.triage import Screen

    screen = Screen(triage_dir)
    key = encoder_fingerprint(model.encoder, model.frontend)
    if screen.model.config.encoder_key != key:
        raise ValueError(
            f"the triage export {triage_dir} was trained on encoder {screen.model.config.encoder_key!r} but "
            f"this model's encoder is {key!r}: train the screen for this encoder (`medlm train triage "
            "model.init_from=<export>`)"
        )
    return screen


# --- ASR baseline -------------------------------------------------------------------------------------------


@serve.deployment  # options: medlm.serving.config.DEPLOYMENTS (applied by build_app)
class WhisperTranscriber(BatchedReplica):
    """A Whisper checkpoint's own encoder-decoder (``/v1/audio/transcriptions`` with its name as ``model``):
    the ASR a user would pick instead of the SpeechLM, dynamically batched across requests."""

    def __init__(self, model: str, batching: BatchOptions | None = None):
        from medlm.models.baselines import WhisperASR

        self.asr = WhisperASR(model)
        self._batch_with(self.transcribe, batching)

    @serve.batch  # sizes: set in __init__ (_batch_with)
    async def transcribe(self, waves: list[np.ndarray]) -> list[str]:
        self.stats.add(len(waves))
        return await asyncio.to_thread(self.asr.transcribe, waves)


# --- TTS ----------------------------------------------------------------------------------------------------

REPLY_RATE = 24000  # spoken replies' sample rate (OpenAI's pcm16 rate)


def reply_voices(options: SpeechOptions) -> dict[str, Any]:
    """API voice name -> :class:`medlm.models.tts.Voice`: the Piper voice (named after its speaker, e.g.
    ``joe``) if it is available, then the espeak-ng voices; the default voice first."""
    from medlm.models.tts import Voice, piper_onnx

    voices: dict[str, Voice] = {}
    if options.piper_voice:
        try:
            onnx = piper_onnx(options.piper_voice)
        except FileNotFoundError:
            log.warning(
                "Piper voice %s is not available: spoken replies use espeak-ng only", options.piper_voice
            )
        else:
            name = (
                options.piper_voice.removeprefix("piper-")
                if not options.piper_voice.endswith(".onnx")
                else onnx.stem
            )
            voices[name] = Voice(f"piper:{name}", "en-us", "male", "adult", engine="piper")
    for name, voice_id in options.espeak_voices.items():
        voices.setdefault(name, Voice(voice_id, voice_id, "male", "adult", pitch=50, speed=165))
    default = options.default_voice or next(iter(voices), None)
    if default not in voices:
        raise ValueError(f"default voice {default!r} is not one of {sorted(voices)}")
    return {default: voices.pop(default), **voices}


@serve.deployment  # options: medlm.serving.config.DEPLOYMENTS (applied by build_app)
class Speaker(BatchedReplica):
    """Reply sentences -> speech at 24 kHz: Piper (onnxruntime) with espeak-ng as the fallback voice engine.

    Sentences of concurrent requests are collected by ``@serve.batch`` and synthesised in one worker thread
    per batch: Piper's ONNX graph returns no per-item lengths, so a padded tensor batch could not be cut apart
    again; throughput grows by replicas (autoscaling on ongoing requests)."""

    def __init__(self, options: SpeechOptions | None = None, batching: BatchOptions | None = None):
        from medlm.models.tts import MultiTTS, TTSConfig

        options = options or SpeechOptions()
        self.voices = reply_voices(options)
        self.tts = MultiTTS(TTSConfig(piper_voice=options.piper_voice or "piper-joe"))
        self.fallback = next((v for v in self.voices.values() if v.engine == "espeak"), None)
        self._batch_with(self.speak, batching)

    def voice_names(self) -> list[str]:
        """The voices, the default first."""
        return list(self.voices)

    @serve.batch  # sizes: set in __init__ (_batch_with)
    async def speak(self, items: list[tuple[str, str]]) -> list[np.ndarray]:
        """(sentence, voice name) pairs -> float32 mono waveforms at :data:`REPLY_RATE`."""
        self.stats.add(len(items))
        return await asyncio.to_thread(lambda: [self._speak(text, voice) for text, voice in items])

    def _speak(self, text: str, voice: str) -> np.ndarray:
        from medlm.audio import resample

        first = self.voices[voice]
        for v in [first] if self.fallback is None or self.fallback is first else [first, self.fallback]:
            try:
                wave, rate = self.tts.synthesize(text, v)
                return resample(wave, rate, REPLY_RATE)
            except (RuntimeError, ValueError, OSError) as e:  # no message logged: it would carry the text
                log.warning("%s could not speak a sentence (%s)", v.engine, type(e).__name__)
        return np.zeros(REPLY_RATE // 5, dtype=np.float32)  # nothing pronounceable (model output, not input)


# --- LLM ----------------------------------------------------------------------------------------------------


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
    usage: Usage | None = None  # set on the last chunk


def render_prompt(processor, messages: list[dict[str, Any]]) -> tuple[list[int], list[np.ndarray]]:
    """Chat -> prompt token ids + audio embeddings: ``SpeechLMProcessor.render_prompt`` (the rendering the
    model was trained with), bad input as a 400."""
    try:
        return processor.render_prompt(messages)
    except ValueError as e:
        raise APIError(400, str(e), param="messages", code="invalid_request") from None


@serve.deployment  # options: medlm.serving.config.DEPLOYMENTS (applied by build_app)
class LLM:
    """Streamed generation from spliced audio embeddings under continuous batching
    (:class:`medlm.serving.generation.Engine`); LoRA adapters multiplexed.
    Loads only the export's LLM part."""

    def __init__(
        self,
        model_dir: str,
        served_model_name: str = "medlm",
        adapters_dir: str | None = None,
        batching: GenerationOptions | None = None,
    ):
        from medlm.models import SpeechLM, SpeechLMProcessor
        from medlm.serving.generation import Engine
        from medlm.serving.metrics import batch_size_histogram

        local = storage.local_copy(model_dir, exclude=(EXPORT_PARTS["audio"][0],))
        self.model = SpeechLM.from_pretrained_part(local, "llm")
        self.processor = SpeechLMProcessor.from_pretrained(local)
        self.tokenizer = self.processor.tokenizer
        self.audio_token_id = self.processor.audio_token_id
        self.max_positions = getattr(self.model.config.text_config, "max_position_embeddings", 4096)
        self.served_model_name = served_model_name
        self.adapters_dir = adapters_dir
        self.lock = threading.Lock()  # held by every decode step; adapters load under it
        batching = batching or GenerationOptions()
        self.engine = Engine(
            self.model.llm,
            self.tokenizer.eos_token_id,
            lambda name: activate_adapter(self.model, name),
            self.lock,
            batching.max_batch_size,
            batching.scheduling,
            batching.batch_wait_timeout_s,
            on_step=batch_size_histogram().observe,
        )

    def ready(self) -> bool:
        return self.engine.thread.is_alive()

    def batch_stats(self) -> dict[str, Any]:
        return self.engine.stats()

    def model_ids(self) -> list[str]:
        return [self.served_model_name, *list_adapters(self.adapters_dir)]

    # --- adapters ---

    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_adapter(self, model_id: str) -> _LoadedAdapter:
        if model_id == self.served_model_name:
            return _LoadedAdapter(self.model, None, self.lock)
        if model_id not in list_adapters(self.adapters_dir):
            raise APIError(
                404, f"The model '{model_id}' does not exist", param="model", code="model_not_found"
            )
        await asyncio.to_thread(self._load_adapter, model_id)
        return _LoadedAdapter(self.model, model_id, self.lock)

    def _load_adapter(self, model_id: str) -> None:
        with self.lock:  # never change the LoRA layers while a step runs
            load_adapter(self.model, storage.join(self.adapters_dir, model_id), model_id)

    # --- generation ---

    @torch.inference_mode()
    def prompt_embeds(self, messages: list[dict[str, Any]]) -> torch.Tensor:
        """The chat rendered and embedded, audio spliced in: (L, D); context overflow is a 400
        (by the caller)."""
        from medlm.models import replace_placeholders_and_build_targets

        ids, audio = render_prompt(self.processor, messages)
        ids_t = torch.tensor([ids])
        text = self.model.get_input_embeddings()(ids_t.masked_fill(ids_t == self.audio_token_id, 0))
        embeds, _, _ = replace_placeholders_and_build_targets(
            ids_t,
            torch.ones_like(ids_t),
            text,
            self.model.compress([torch.tensor(np.asarray(a)) for a in audio]),
            self.audio_token_id,
        )
        return embeds[0]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream one request's completion; it decodes in the replica's running batch. A client that goes away
        (this generator closed or cancelled) frees its row at the next step."""
        from medlm.serving.generation import Slot

        embeds = self.prompt_embeds(request.messages)
        prompt_len = embeds.shape[0]
        if prompt_len + request.max_new_tokens > self.max_positions:
            raise APIError(
                400,
                f"prompt ({prompt_len} tokens) + max_tokens ({request.max_new_tokens}) exceeds the "
                f"model's context of {self.max_positions} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        model_id = serve.get_multiplexed_model_id() or self.served_model_name
        adapter = await self.get_adapter(model_id)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        slot = Slot(
            embeds,
            request.max_new_tokens,
            lambda tok, fin: loop.call_soon_threadsafe(queue.put_nowait, (tok, fin)),
            request.temperature,
            request.top_p,
            adapter.name,
        )
        self.engine.submit(slot)
        tokens, sent = [], ""
        try:
            while True:
                tok, finish = await queue.get()
                if finish == "error":
                    raise APIError(500, "generation failed")
                if tok is not None:
                    tokens.append(tok)
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                if finish is None and text.endswith("\ufffd"):  # hold back a partly decoded character
                    continue
                delta, sent = text[len(sent) :], text
                if finish is None:
                    if delta:
                        yield GenerationChunk(delta)
                    continue
                yield GenerationChunk(
                    delta,
                    finish,
                    Usage(
                        prompt_tokens=prompt_len,
                        completion_tokens=len(tokens),
                        total_tokens=prompt_len + len(tokens),
                    ),
                )
                return
        finally:
            if not slot.done:
                self.engine.cancel(slot)


class _LoadedAdapter:
    """What the multiplexed loader caches: a LoRA adapter inside the replica's model (None = base)."""

    def __init__(self, model, name: str | None, lock: threading.Lock):
        self.model, self.name, self.lock = model, name, lock

    def __del__(self):  # Serve calls this (in a thread) when it evicts the adapter
        if self.name is not None:
            with self.lock:
                unload_adapter(self.model, self.name)
            self.name = None


# --- CT retriever -------------------------------------------------------------------------------------------


@serve.deployment  # options: medlm.serving.config.DEPLOYMENTS (applied by build_app)
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
            raise APIError(
                400,
                f"unknown labels {unknown}; known: {list(self.index.classes)}",
                param="labels",
                code="invalid_labels",
            )
        return [LabelScore(label=k, score=v) for k, v in self.index.classify(query, labels).items()]
