"""SpeechLMProcessor: chat messages (text + audio parts) -> numpy features for one example -> padded batches.

``featurize`` is numpy-only so it can run inside Ray Data actors. Layout comes from the tokenizer's chat
template; every audio part becomes one ``<|audio|>`` token that the model expands to the audio's embeddings.
Labels are ``-100`` except the assistant turns' tokens, up to and including their end-of-turn token.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from medlm.models.encoder import SAMPLING_RATE, AudioFrontend, as_waveform, num_audio_tokens
from medlm.models.tokenizer import AUDIO_TOKEN

IGNORE_INDEX = -100
_ROLES = ("system", "user", "assistant")


class SpeechLMProcessor:
    """Tokenizer (with chat template and ``<|audio|>``) + the audio front end that matches the encoder."""

    def __init__(
        self,
        tokenizer,
        encoder_config: PretrainedConfig,
        stack_factor: int,
        audio_window_seconds: float = 20.0,
    ):
        if AUDIO_TOKEN not in tokenizer.get_vocab():
            raise ValueError(f"tokenizer has no {AUDIO_TOKEN} token")
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token")
        if not tokenizer.chat_template:
            raise ValueError("tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.encoder_config = encoder_config
        self.stack_factor = stack_factor
        self.audio_window_seconds = audio_window_seconds
        self.frontend = AudioFrontend(encoder_config, audio_window_seconds)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)

    # ---- one example -----------------------------------------------------------------------------
    def featurize(
        self,
        messages: list[dict],
        class_label: int | list[int] | None = None,
        add_generation_prompt: bool = False,
        cached_audio: bool = False,
    ) -> dict[str, np.ndarray]:
        """One conversation -> numpy arrays for the model.

        Keys: ``input_ids``, ``attention_mask``, ``labels``, the audio (below), ``audio_chunks`` (chunks per
        audio item), ``num_tokens``, ``class_label``; plus ``teacher_input_ids``, ``teacher_attention_mask``,
        ``teacher_labels`` when every audio part has a ``"transcript"``, and then also ``ctc_labels`` (every
        transcript's tokens, :attr:`ctc_blank_id` removed, concatenated) and ``ctc_label_lengths`` (one per
        audio item).

        The audio: ``input_features`` + ``audio_chunk_lengths`` (the front end's features of ``audio`` parts),
        or, with ``cached_audio`` (every audio part an ``audio_frames`` part: the encoder's frames, cached),
        ``audio_frames`` (float16, all chunks' frames concatenated) + ``audio_frame_counts`` (per chunk).
        """
        chat, items, transcripts = self._flatten(messages)
        ids, labels = self._tokenize(chat, add_generation_prompt)
        if any(isinstance(x, list) for x in items) and not cached_audio:
            raise ValueError(
                "audio_frames parts (cached encoder frames) need featurize(..., cached_audio=True)"
            )
        if cached_audio:
            if not all(isinstance(x, list) for x in items):
                raise ValueError("with cached_audio every audio part must be an audio_frames part")
            frames = [np.asarray(f, np.float16) for item in items for f in item]
            if any(f.ndim != 2 or f.shape[1] != self.frame_dim for f in frames):
                shapes = sorted({f.shape for f in frames})
                raise ValueError(f"cached encoder frames must be (n, {self.frame_dim}); got {shapes[:3]}")
            counts = [len(f) for f in frames]
            audio = {
                "audio_frames": np.concatenate(frames)
                if frames
                else np.zeros((0, self.frame_dim), np.float16),
                "audio_frame_counts": np.asarray(counts, dtype=np.int64),
                "audio_chunks": np.asarray([len(x) for x in items], dtype=np.int64),
            }
        else:
            feats, chunks, lengths = self.frontend.features(items, return_lengths=True)
            counts = [self.frontend.encoder_frames(n) for n in lengths]
            audio = {
                "input_features": feats,
                "audio_chunks": np.asarray(chunks, dtype=np.int64),
                "audio_chunk_lengths": np.asarray(lengths, dtype=np.int64),
            }
        audio_slots = sum(num_audio_tokens(n, self.stack_factor) for n in counts)
        out = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "labels": labels,
            **audio,
            "num_tokens": np.asarray(len(ids) - len(items) + audio_slots, dtype=np.int64),
            "class_label": np.asarray(IGNORE_INDEX if class_label is None else class_label, dtype=np.int64),
        }
        if items and all(t is not None for t in transcripts):
            t_chat, _, _ = self._flatten(messages, transcripts_for_audio=True)
            t_ids, t_labels = self._tokenize(t_chat, add_generation_prompt)
            out.update(
                teacher_input_ids=t_ids, teacher_attention_mask=np.ones_like(t_ids), teacher_labels=t_labels
            )
            targets = [self.ctc_targets(t) for t in transcripts]
            out.update(
                ctc_labels=np.concatenate(targets).astype(np.int64),
                ctc_label_lengths=np.asarray([len(t) for t in targets], dtype=np.int64),
            )
        return out

    @property
    def frame_dim(self) -> int:
        """Width of the encoder's frames (what ``audio_frames`` parts hold)."""
        c = self.encoder_config
        return c.d_model if c.model_type == "whisper" else c.hidden_size

    @functools.cached_property
    def ctc_blank_id(self) -> int:
        """The CTC blank: the LLM token of a single space (frames between words then read as spaces), or the
        pad token where a space is not one token."""
        ids = self.tokenizer(" ", add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else self.tokenizer.pad_token_id

    def ctc_targets(self, transcript: str) -> np.ndarray:
        """A transcript's LLM tokens without the blank: the CTC target of its audio."""
        ids = np.asarray(self.tokenizer(transcript, add_special_tokens=False)["input_ids"], dtype=np.int64)
        return ids[ids != self.ctc_blank_id]

    def render_prompt(self, messages: list[dict]) -> tuple[list[int], list[np.ndarray]]:
        """A chat ending on a user turn -> prompt token ids (one ``<|audio|>`` per audio item, the
        assistant's turn opened) + the audio items in reading order: 16 kHz waveforms for ``audio`` parts,
        the given arrays for ``audio_embeds`` parts. The rendering training used (``featurize``)."""
        chat, items, _ = self._flatten(messages, allow_embeds=True)
        ids, _ = self._tokenize(chat, add_generation_prompt=True)
        return ids.tolist(), items

    def _flatten(self, messages: list[dict], transcripts_for_audio: bool = False, allow_embeds: bool = False):
        """Messages -> (template messages with string content, waveforms, transcripts) with input checks."""
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        chat, waves, transcripts = [], [], []
        for i, msg in enumerate(messages):
            role, content = msg.get("role"), msg.get("content")
            if role not in _ROLES:
                raise ValueError(f"message {i}: role must be one of {_ROLES}, got {role!r}")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            if not isinstance(parts, list) or not parts:
                raise ValueError(f"message {i}: content must be a string or a non-empty list of parts")
            texts = []
            for part in parts:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise ValueError(f"message {i}: text part without a string 'text'")
                    if AUDIO_TOKEN in text:
                        raise ValueError(f"message {i}: text may not contain {AUDIO_TOKEN}")
                    texts.append(text)
                elif (
                    kind == "audio_embeds" and allow_embeds
                ):  # already encoded (serving: the encoder's output)
                    if role != "user":
                        raise ValueError(f"message {i}: audio is only allowed in user turns, not {role!r}")
                    waves.append(np.asarray(part["embeds"], dtype=np.float32))
                    transcripts.append(None)
                    texts.append(AUDIO_TOKEN)
                elif kind == "audio_frames":  # the encoder's frames of an audio part, cached (training)
                    if role != "user":
                        raise ValueError(f"message {i}: audio is only allowed in user turns, not {role!r}")
                    frames = part.get("frames")
                    if not isinstance(frames, list) or not frames:
                        raise ValueError(
                            f"message {i}: audio_frames part without a list of per-chunk 'frames'"
                        )
                    waves.append(list(frames))
                    transcripts.append(part.get("transcript"))
                    texts.append(part["transcript"] if transcripts_for_audio else AUDIO_TOKEN)
                elif kind == "audio":
                    if role != "user":
                        raise ValueError(f"message {i}: audio is only allowed in user turns, not {role!r}")
                    if part.get("audio") is None:
                        raise ValueError(f"message {i}: audio part without 'audio' samples")
                    try:
                        waves.append(
                            as_waveform(part["audio"], int(part.get("sampling_rate", SAMPLING_RATE)))
                        )
                    except ValueError as e:
                        raise ValueError(f"message {i}: {e}") from None
                    transcripts.append(part.get("transcript"))
                    texts.append(part["transcript"] if transcripts_for_audio else AUDIO_TOKEN)
                else:
                    raise ValueError(
                        f"message {i}: part type must be 'text', 'audio', 'audio_frames' or 'audio_embeds', "
                        f"got {kind!r}"
                    )
            chat.append({"role": role, "content": "\n".join(texts)})
        return chat, waves, transcripts

    def _tokenize(self, chat: list[dict], add_generation_prompt: bool) -> tuple[np.ndarray, np.ndarray]:
        """Render with the chat template; label each assistant turn's tokens through its end-of-turn."""

        def render(msgs, gen=False):
            return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

        full = render(chat, add_generation_prompt)
        spans = []
        eos = self.tokenizer.eos_token
        for i, msg in enumerate(chat):
            if msg["role"] != "assistant":
                continue
            prefix, upto = render(chat[:i], True) if i else "", render(chat[: i + 1])
            if not (full.startswith(upto) and upto.startswith(prefix)):
                raise ValueError(
                    "the chat template does not render conversations prefix-consistently; "
                    "cannot locate assistant turns"
                )
            end = upto.rfind(eos) + len(eos) if eos and upto.rfind(eos) >= len(prefix) else len(upto)
            spans.append((len(prefix), end))
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        labels = np.full_like(ids, IGNORE_INDEX)
        for j, (start, _) in enumerate(enc["offset_mapping"]):
            if any(a <= start < b for a, b in spans):
                labels[j] = ids[j]
        return ids, labels

    # ---- batches ---------------------------------------------------------------------------------
    def collate(self, examples: list[dict[str, Any]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad featurized examples into a batch: right for ``model(**batch)``, left for ``generate``."""
        if not examples:
            raise ValueError("collate needs at least one example")
        pad = self.tokenizer.pad_token_id
        batch = {
            "input_ids": _pad([e["input_ids"] for e in examples], pad, padding_side),
            "attention_mask": _pad([e["attention_mask"] for e in examples], 0, padding_side),
            "audio_chunks": _cat(examples, "audio_chunks", np.int64),
        }
        cached = ["audio_frames" in e for e in examples]
        if any(cached) and not all(cached):
            raise ValueError(
                "a batch mixes examples with cached encoder frames and examples with audio features"
            )
        if all(cached):
            batch["audio_frames"] = _cat(examples, "audio_frames", np.float16, (-1, self.frame_dim))
            batch["audio_frame_counts"] = _cat(examples, "audio_frame_counts", np.int64)
        else:
            batch["input_features"] = _cat(
                examples, "input_features", np.float32, (-1, *self.frontend.feature_shape)
            )
            batch["audio_chunk_lengths"] = _cat(examples, "audio_chunk_lengths", np.int64)
        if all("labels" in e for e in examples):
            batch["labels"] = _pad([e["labels"] for e in examples], IGNORE_INDEX, padding_side)
        if all("class_label" in e for e in examples):  # (B,) or, with entity-type targets, (B, 1 + K)
            labels = [np.atleast_1d(np.asarray(e["class_label"], np.int64)) for e in examples]
            width = max(len(x) for x in labels)
            padded = np.full((len(labels), width), IGNORE_INDEX, np.int64)
            for i, x in enumerate(labels):
                padded[i, : len(x)] = x
            batch["class_labels"] = torch.from_numpy(padded[:, 0] if width == 1 else padded)
        if all("num_tokens" in e for e in examples):
            batch["num_tokens"] = torch.tensor([int(e["num_tokens"]) for e in examples], dtype=torch.long)
        kd = [("teacher_input_ids" in e) for e in examples]
        if any(kd):
            # Examples without a text view (text-only, or audio without transcript) get a one-token
            # stand-in and kd_mask False: the KD loss covers exactly the examples that have a teacher.
            one = np.ones(1, np.int64)
            batch["teacher_input_ids"] = _pad(
                [e["teacher_input_ids"] if k else one * pad for e, k in zip(examples, kd)], pad, padding_side
            )
            batch["teacher_attention_mask"] = _pad(
                [e["teacher_attention_mask"] if k else one for e, k in zip(examples, kd)], 0, padding_side
            )
            batch["teacher_labels"] = _pad(
                [e["teacher_labels"] if k else one * IGNORE_INDEX for e, k in zip(examples, kd)],
                IGNORE_INDEX,
                padding_side,
            )
            batch["kd_mask"] = torch.tensor(kd, dtype=torch.bool)
        if any("ctc_labels" in e for e in examples):  # an example without transcripts: -1 per audio item
            batch["ctc_labels"] = torch.from_numpy(
                np.concatenate([np.asarray(e["ctc_labels"], np.int64) for e in examples if "ctc_labels" in e])
            )
            batch["ctc_label_lengths"] = torch.from_numpy(
                np.concatenate(
                    [
                        np.asarray(e["ctc_label_lengths"], np.int64)
                        if "ctc_labels" in e
                        else np.full(len(np.asarray(e["audio_chunks"]).reshape(-1)), -1, np.int64)
                        for e in examples
                    ]
                )
            )
        return batch

    def prepare_generation(self, messages_batch: list[list[dict]]) -> dict[str, torch.Tensor]:
        """Left-padded model inputs ending in the assistant prompt, for ``model.generate(**inputs)``."""
        examples = [self.featurize(m, add_generation_prompt=True) for m in messages_batch]
        batch = self.collate(examples, padding_side="left")
        return {
            k: batch[k]
            for k in ("input_ids", "attention_mask", "input_features", "audio_chunks", "audio_chunk_lengths")
        }

    def decode(self, token_ids, skip_special_tokens: bool = True) -> list[str]:
        return self.tokenizer.batch_decode(token_ids, skip_special_tokens=skip_special_tokens)

    # ---- persistence -----------------------------------------------------------------------------
    def save_pretrained(self, directory: str) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        (path / "medlm_processor.json").write_text(
            json.dumps(
                {
                    "encoder_config": self.encoder_config.to_dict(),
                    "stack_factor": self.stack_factor,
                    "audio_window_seconds": self.audio_window_seconds,
                },
                indent=2,
            )
        )

    @classmethod
    def from_pretrained(cls, directory: str) -> SpeechLMProcessor:
        """Load from a local dir or ``s3://`` URI written by ``save_pretrained``."""
        from medlm.storage import local_copy

        path = Path(local_copy(str(directory)))
        meta = json.loads((path / "medlm_processor.json").read_text())
        enc = dict(meta["encoder_config"])
        encoder_config = AutoConfig.for_model(enc.pop("model_type"), **enc)
        return cls(
            AutoTokenizer.from_pretrained(path),
            encoder_config,
            meta["stack_factor"],
            meta["audio_window_seconds"],
        )


def _cat(examples: list[dict], key: str, dtype, shape: tuple = (-1,)) -> torch.Tensor:
    """The examples' ``key`` arrays, each reshaped to ``shape``, concatenated along the first axis."""
    return torch.from_numpy(np.concatenate([np.asarray(e[key], dtype).reshape(shape) for e in examples]))


def _pad(rows: list[np.ndarray], value: int, side: str) -> torch.Tensor:
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    length = max(len(r) for r in rows)
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, r in enumerate(rows):
        r = torch.as_tensor(np.asarray(r, dtype=np.int64))
        if side == "right":
            out[i, : len(r)] = r
        else:
            out[i, length - len(r) :] = r
    return out
