"""The safety screen: each patient turn, typed or spoken, classified ``none`` / ``emergency`` / ``harmful``.

Two small branches, one per modality, each a pooled classifier over a sequence of vectors the platform
already has:

- text: the hidden states of a pretrained LLM's first ``text_layers`` layers over the turn's tokens (frozen,
  kept in the export: SmolLM2-135M's first 8 layers are 41 M parameters), so a turn is read in context
  ("had chest pain last year" is not "have chest pain now") without the LLM replica;
- speech: the frozen audio encoder's frames (what the SpeechEncoder replica computes for the SpeechLM
  anyway), so a spoken turn is screened from the audio itself, with no transcript and no cascade, for the
  cost of the head alone. The export records the encoder's fingerprint (``encoder_fingerprint``) and a
  replica whose encoder differs refuses to load it.

A branch: LayerNorm -> Linear -> (audio: mean over ``audio_pool`` frames) -> two residual 1-D convolutions
-> attention pooling and max pooling -> Linear -> logits. ``decide`` turns probabilities into a label with
the export's thresholds (chosen on validation data by the training job, ``medlm.train.triage``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from medlm.models.modeling import as_config

LABELS = ("none", "emergency", "harmful")
Modality = Literal["text", "audio"]

# What a positive screen makes the reply say first ({number}: the deployment's emergency number).
EMERGENCY_NOTICE = (
    "This could be a medical emergency. Call {number} now, or have someone take you to the nearest "
    "emergency department. Do not wait to see if it gets better."
)
REFUSAL = (
    "I can't help with that: it could cause serious harm. If you or someone else is at risk, call "
    "{number}. I'm glad to help with questions about keeping someone safe or getting proper care."
)


class TriageConfig(PretrainedConfig):
    model_type = "medlm_triage"

    def __init__(
        self,
        text_config: dict | PretrainedConfig | None = None,
        audio_dim: int = 384,
        hidden: int = 192,
        kernel: int = 5,
        audio_pool: int = 4,
        dropout: float = 0.1,
        labels: tuple[str, ...] | list[str] = LABELS,
        thresholds: dict[str, float] | None = None,
        encoder_key: str = "",
        **kwargs,
    ):
        # the text encoder: a causal LM's base model cut to its first layers (LlamaConfig, Qwen2Config, ...)
        self.text_config = as_config(text_config) or AutoConfig.for_model(
            "llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=0
        )
        self.audio_dim = audio_dim
        self.hidden, self.kernel, self.audio_pool, self.dropout = hidden, kernel, audio_pool, dropout
        self.labels = list(labels)
        # "<modality>.<label>" -> the probability at or above which a turn gets the label (set by the job)
        self.thresholds = dict(thresholds or {f"{m}.{k}": 0.5 for m in ("text", "audio") for k in labels[1:]})
        self.encoder_key = encoder_key  # the audio encoder's fingerprint the audio branch was trained on
        super().__init__(**kwargs)


class PooledClassifier(nn.Module):
    """(B, T, d) vectors + (B, T) mask -> (B, labels) logits."""

    def __init__(self, dim: int, config: TriageConfig, pool: int = 1):
        super().__init__()
        h = config.hidden
        self.pool = pool
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, h)
        self.convs = nn.ModuleList(
            nn.Conv1d(h, h, config.kernel, padding=config.kernel // 2) for _ in range(2)
        )
        self.score = nn.Linear(h, 1)
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(2 * h, len(config.labels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.norm(x)) * mask[..., None]
        if self.pool > 1:  # mean over each group of `pool` steps (valid steps only)
            b, t, d = h.shape
            pad = -t % self.pool
            h = F.pad(h, (0, 0, 0, pad)).view(b, -1, self.pool, d).sum(2)
            n = F.pad(mask.float(), (0, pad)).view(b, -1, self.pool).sum(2)
            h, mask = h / n.clamp(min=1)[..., None], n > 0
        m = mask[:, None, :].to(h.dtype)
        h = h.transpose(1, 2)
        for conv in self.convs:
            h = (h + F.gelu(conv(self.drop(h)))) * m
        h = h.transpose(1, 2)
        weights = self.score(h).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)
        attended = (weights[..., None] * h).sum(1)
        maxed = h.masked_fill(~mask[..., None], float("-inf")).amax(1).nan_to_num(0.0, neginf=0.0)
        return self.out(self.drop(torch.cat([attended, maxed], -1)))


class TriageModel(PreTrainedModel):
    config_class = TriageConfig
    base_model_prefix = "triage"

    def __init__(self, config: TriageConfig):
        super().__init__(config)
        self.text_encoder = AutoModel.from_config(config.text_config)  # frozen (the job loads its weights)
        self.text_encoder.requires_grad_(False)
        self.text = PooledClassifier(config.text_config.hidden_size, config)
        self.audio = PooledClassifier(config.audio_dim, config, pool=config.audio_pool)
        self.post_init()

    def _init_weights(
        self, module
    ):  # the text encoder is loaded from the LLM; the branches keep torch's init
        pass

    def text_states(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) tokens -> (B, T, d) hidden states of the text encoder (right padding; causal, so a valid
        position never sees padding)."""
        return self.text_encoder(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state

    def forward(
        self,
        modality: Modality,
        vectors: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for a batch of one modality: text as ``input_ids`` (B, T) or as its text-encoder states
        (``vectors``, what training caches), audio as encoder ``vectors`` (B, T, d); ``mask`` (B, T) marks the
        valid steps. With ``labels``, also the CE loss."""
        if modality == "text" and vectors is None:
            with torch.no_grad():
                vectors = self.text_states(input_ids, mask)
        branch = self.text if modality == "text" else self.audio
        logits = branch(vectors.float(), mask.bool())
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return logits, loss

    def decide(self, probs: np.ndarray, modality: Modality) -> str:
        """Probabilities over ``config.labels`` -> the label: ``emergency`` if its probability reaches the
        modality's threshold, else ``harmful`` likewise, else ``none``."""
        for label in ("emergency", "harmful"):
            if probs[self.config.labels.index(label)] >= self.config.thresholds[f"{modality}.{label}"]:
                return label
        return "none"


def frames_by_item(frames: list[torch.Tensor], chunks_per_item, dim: int) -> list[torch.Tensor]:
    """Per-chunk encoder frames -> one (f, dim) tensor per audio item (its chunks concatenated)."""
    out, start = [], 0
    for n in [int(c) for c in chunks_per_item]:
        part = frames[start : start + n]
        out.append(torch.cat(part) if part else torch.zeros(0, dim))
        start += n
    return out


def pad_batch(seqs: list[torch.Tensor], pad_value=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences (T_i, ...) -> (B, T, ...) padded with ``pad_value``, and the (B, T) validity mask (a sequence
    of length 0 gets one padding step, masked)."""
    longest = max([len(s) for s in seqs] + [1])
    out = seqs[0].new_full((len(seqs), longest, *seqs[0].shape[1:]), pad_value)
    mask = torch.zeros(len(seqs), longest, dtype=torch.bool)
    for i, s in enumerate(seqs):
        out[i, : len(s)], mask[i, : len(s)] = s, True
    return out, mask


@torch.inference_mode()
def item_frames(model, waves: list[np.ndarray], batch: int = 16) -> list[torch.Tensor]:
    """The frozen encoder's frames of each waveform (its chunks' valid frames concatenated), what the
    SpeechEncoder replica hands the screen."""
    out = []
    for start in range(0, len(waves), batch):
        feats, chunks, lengths = model.frontend.features(waves[start : start + batch], return_lengths=True)
        frames = model.encoder_frames(torch.from_numpy(feats), torch.tensor(lengths)) if len(feats) else []
        out += [f.half() for f in frames_by_item(frames, chunks, model.config.encoder_config.hidden_size)]
    return out


MAX_TOKENS = 256  # a turn's last tokens screened (a long turn: its end carries what it asks)


def token_ids(tokenizer, text: str) -> torch.Tensor:
    """The tokens the text branch reads of a turn (training and serving alike): its last ``MAX_TOKENS``."""
    return torch.tensor(
        tokenizer(text, add_special_tokens=False)["input_ids"][-MAX_TOKENS:], dtype=torch.long
    )


class Screen:
    """A loaded triage export with its tokenizer: text and encoder frames in, probabilities out (batched)."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        from medlm.storage import local_copy

        local = local_copy(path)
        self.model = TriageModel.from_pretrained(local).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(f"{local}/tokenizer")

    @property
    def labels(self) -> list[str]:
        return self.model.config.labels

    def _probs(self, modality: Modality, mask: torch.Tensor, **inputs) -> np.ndarray:
        """Probabilities per item; an item with nothing in it (no tokens, no frames) is ``none`` outright."""
        logits, _ = self.model(modality, mask=mask, **inputs)
        probs = logits.softmax(-1)
        probs[~mask.any(1)] = F.one_hot(torch.tensor(self.labels.index("none")), len(self.labels)).to(
            probs.dtype
        )
        return probs.numpy()

    @torch.inference_mode()
    def text_probs(self, texts: list[str]) -> np.ndarray:
        ids, mask = pad_batch([token_ids(self.tokenizer, t.strip()) for t in texts])
        return self._probs("text", mask, input_ids=ids)

    @torch.inference_mode()
    def audio_probs(self, frames: list[torch.Tensor]) -> np.ndarray:
        """``frames``: one (f, d) tensor of encoder frames per audio item (its chunks concatenated)."""
        vectors, mask = pad_batch([f.float() for f in frames])
        return self._probs("audio", mask, vectors=vectors)
