"""The baselines a user would pick instead of an end-to-end SpeechLM.

* :class:`WhisperASR`: a Whisper checkpoint's own encoder-decoder (``whisper-tiny.en`` from the model
  store by default), greedy, batched; audio longer than the 30 s window is transcribed window by window.
* :class:`Cascade`: Whisper transcribes every audio part of a conversation, then a text LLM
  (``smollm2-135m-instruct`` by default, with its own chat template) answers the transcribed conversation.

Both take a model store name, a local dir or an ``s3://`` URI, like ``model.encoder_path``.
"""

from __future__ import annotations

import numpy as np
import torch

from medlm.models.encoder import SAMPLING_RATE, as_waveform
from medlm.models.pretrained import resolve_checkpoint


def audio_parts(messages: list[dict]) -> list[dict]:
    """The audio parts of a chat, in reading order."""
    return [
        p
        for m in messages
        if not isinstance(m["content"], str)
        for p in m["content"]
        if p.get("type") == "audio"
    ]


def with_text(messages: list[dict], texts: list[str]) -> list[dict]:
    """The chat with its audio parts replaced, in reading order, by ``texts`` (transcripts: the text view of a
    spoken chat); each message's parts are joined by newlines, as the SpeechLM processor renders them."""
    words = iter(texts)
    return [
        {
            "role": m["role"],
            "content": m["content"]
            if isinstance(m["content"], str)
            else "\n".join(next(words) if p.get("type") == "audio" else p["text"] for p in m["content"]),
        }
        for m in messages
    ]


class WhisperASR:
    def __init__(self, model: str = "whisper-tiny.en", dtype: torch.dtype = torch.float32):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        path = resolve_checkpoint(model)
        self.name = model
        self.model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype).eval()
        self.processor = WhisperProcessor.from_pretrained(path)
        self.window = self.processor.feature_extractor.n_samples  # 30 s at 16 kHz

    @torch.no_grad()
    def transcribe(
        self, waves: list[np.ndarray], sampling_rate: int = SAMPLING_RATE, max_new_tokens: int = 224
    ) -> list[str]:
        """Greedy transcripts of mono waveforms (any rate: resampled to 16 kHz)."""
        waves = [as_waveform(w, sampling_rate) for w in waves]
        pieces, owner = [], []
        for i, w in enumerate(waves):
            for start in range(0, len(w), self.window):
                pieces.append(w[start : start + self.window])
                owner.append(i)
        if not pieces:
            return []
        feats = self.processor.feature_extractor(pieces, sampling_rate=SAMPLING_RATE, return_tensors="pt")
        ids = self.model.generate(
            feats.input_features.to(self.model.dtype), max_new_tokens=max_new_tokens, do_sample=False
        )
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        out = [""] * len(waves)
        for i, t in zip(owner, texts):
            out[i] = f"{out[i]} {t.strip()}".strip()
        return out


class Cascade:
    """Whisper transcribes, a text LLM answers: ``generate(messages_batch)`` as ``SpeechLM`` callers use
    it."""

    def __init__(
        self,
        asr: str = "whisper-tiny.en",
        llm: str = "smollm2-135m-instruct",
        dtype: torch.dtype = torch.float32,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.asr = asr if isinstance(asr, WhisperASR) else WhisperASR(asr, dtype)
        path = resolve_checkpoint(llm)
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.llm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()

    def transcribe_messages(self, messages_batch: list[list[dict]]) -> list[list[dict]]:
        """Every audio part replaced by its Whisper transcript (one batched ASR call for the whole batch)."""
        parts = [audio_parts(msgs) for msgs in messages_batch]
        heard = iter(
            self.asr.transcribe(
                [
                    as_waveform(p["audio"], int(p.get("sampling_rate", SAMPLING_RATE)))
                    for ps in parts
                    for p in ps
                ]
            )
        )
        return [with_text(msgs, [next(heard) for _ in ps]) for msgs, ps in zip(messages_batch, parts)]

    @torch.no_grad()
    def generate(self, messages_batch: list[list[dict]], max_new_tokens: int = 64) -> list[str]:
        """Greedy answers to conversations that end on a user turn."""
        convs = self.transcribe_messages(messages_batch)
        enc = self.tokenizer.apply_chat_template(
            convs, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
        )
        out = self.llm.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
        )
        return [
            t.strip()
            for t in self.tokenizer.batch_decode(
                out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
            )
        ]
