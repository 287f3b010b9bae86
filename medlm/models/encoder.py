"""Audio front end and encoder, reusable on their own (SpeechLM, the CT speech student, serving).

Audio is cut into encoder-sized windows, never truncated: Whisper sees fixed windows of
``max_source_positions / 50`` seconds (30 s for real Whisper, 10 s for the tiny/small presets); wav2vec2-style
encoders see ``window_seconds`` windows of raw waveform. Each chunk's valid length is kept so that only
the encoder frames that carry audio (not the padding of the last chunk) become LLM embeddings.

    frontend = AudioFrontend(encoder_config)
    features, chunks_per_item = frontend.features([wav_a, wav_b])   # (chunks, mels, frames), [n_a, n_b]
    frames = build_audio_encoder(encoder_config)(torch.from_numpy(features))  # (chunks, T, d)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig

from medlm.audio import SAMPLING_RATE, as_waveform  # noqa: F401 - the model's input contract, re-exported

MEL_HOP = 160  # 10 ms mel hop at 16 kHz


def num_audio_tokens(encoder_frames: int, stack_factor: int) -> int:
    """LLM embedding slots for ``encoder_frames`` frames after stacking ``stack_factor`` frames into one."""
    return max(1, math.ceil(encoder_frames / stack_factor))


class AudioFrontend:
    """Chunking + feature extraction matching one encoder config (Whisper log-mel or wav2vec2 waveform)."""

    def __init__(self, encoder_config: PretrainedConfig, window_seconds: float = 20.0):
        self.encoder_type = encoder_config.model_type
        if self.encoder_type == "whisper":
            from transformers import WhisperFeatureExtractor

            self.max_frames = encoder_config.max_source_positions
            mel_frames = self.max_frames * 2  # conv2 has stride 2
            self.window_samples = mel_frames * MEL_HOP
            if self.window_samples % SAMPLING_RATE:
                raise ValueError(
                    f"Whisper max_source_positions={self.max_frames} is not a whole number of seconds"
                )
            self.extractor = WhisperFeatureExtractor(
                feature_size=encoder_config.num_mel_bins,
                sampling_rate=SAMPLING_RATE,
                hop_length=MEL_HOP,
                chunk_length=self.window_samples // SAMPLING_RATE,
            )
        elif self.encoder_type in ("wav2vec2", "hubert"):
            from transformers import Wav2Vec2FeatureExtractor

            self.window_samples = int(window_seconds * SAMPLING_RATE)
            self.conv = list(zip(encoder_config.conv_kernel, encoder_config.conv_stride))
            self.max_frames = self._conv_frames(self.window_samples)
            self.extractor = Wav2Vec2FeatureExtractor(
                feature_size=1, sampling_rate=SAMPLING_RATE, do_normalize=True, return_attention_mask=False
            )
        else:
            raise ValueError(
                f"unsupported audio encoder type {self.encoder_type!r} (whisper | wav2vec2 | hubert)"
            )

    def _conv_frames(self, samples: int) -> int:
        for kernel, stride in self.conv:
            samples = (samples - kernel) // stride + 1
        return samples

    def encoder_frames(self, chunk_samples: int) -> int:
        """Encoder output frames that carry audio for a chunk of ``chunk_samples`` valid samples."""
        if self.encoder_type == "whisper":
            frames = math.ceil(math.ceil(chunk_samples / MEL_HOP) / 2)
        else:
            frames = self._conv_frames(chunk_samples)
        return min(max(frames, 1), self.max_frames)

    def split(self, wav: np.ndarray) -> list[np.ndarray]:
        """Consecutive windows covering all of ``wav`` (the last one may be shorter)."""
        return [wav[i : i + self.window_samples] for i in range(0, len(wav), self.window_samples)]

    def features(self, waveforms: list[np.ndarray], return_lengths: bool = False):
        """``(features, chunks_per_item)`` for 16 kHz mono waveforms.

        ``features`` is float32 (chunks, mels | 1, frames | samples).

        With ``return_lengths`` also each chunk's valid sample count (the model drops padding frames).
        """
        chunks, per_item, lengths = [], [], []
        for wav in waveforms:
            pieces = self.split(as_waveform(wav))
            per_item.append(len(pieces))
            chunks.extend(pieces)
            lengths.extend(len(p) for p in pieces)
        if not chunks:
            feats = np.zeros((0, *self.feature_shape), dtype=np.float32)
        else:
            out = self.extractor(
                chunks,
                sampling_rate=SAMPLING_RATE,
                padding="max_length",
                max_length=self.window_samples,
                return_tensors="np",
            )
            feats = out.input_features if self.encoder_type == "whisper" else out.input_values[:, None, :]
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if return_lengths:
            return feats, per_item, lengths
        return feats, per_item

    @property
    def feature_shape(self) -> tuple[int, int]:
        if self.encoder_type == "whisper":
            return (self.extractor.feature_size, self.window_samples // MEL_HOP)
        return (1, self.window_samples)


class AudioEncoder(nn.Module):
    """An HF audio encoder behind one call: features (chunks, mels | 1, ...) -> frames (chunks, T, d)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.is_whisper = model.config.model_type == "whisper"
        self.hidden_size = model.config.d_model if self.is_whisper else model.config.hidden_size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = features.to(next(self.model.parameters()).dtype)
        if self.is_whisper:
            return self.model(input_features=features).last_hidden_state
        return self.model(input_values=features[:, 0]).last_hidden_state


def encoder_fingerprint(encoder: AudioEncoder, frontend: AudioFrontend, dtype: str = "float32") -> str:
    """A key for what ``encoder`` computes from a recording: its weights (by name, as a model of ``dtype``
    holds them: a bfloat16 run and the float32 encoder the cache ran share a key) and the front end's window
    and features. Two encoders share it only if those are the same; the encoder cache
    (``medlm.data.encoder_cache``) is keyed by it."""
    salt = f"{frontend.encoder_type}/{frontend.window_samples}/{frontend.feature_shape}"
    return weights_digest(encoder, dtype, salt)


def weights_digest(module: torch.nn.Module, dtype: str = "float32", salt: str = "") -> str:
    """A short hash of ``salt`` and every parameter and buffer of ``module`` by name, as a model of ``dtype``
    holds them."""
    import hashlib

    cast = getattr(torch, dtype)
    h = hashlib.sha256(salt.encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to(cast).float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def build_audio_encoder(encoder_config: PretrainedConfig, path: str | None = None) -> AudioEncoder:
    """The encoder for ``encoder_config`` (random init), or real weights from an HF checkpoint / s3:// URI."""
    from transformers import AutoModel, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if path is None:
        if encoder_config.model_type == "whisper":
            return AudioEncoder(WhisperEncoder(encoder_config))
        return AudioEncoder(AutoModel.from_config(encoder_config))
    from medlm.storage import local_copy

    local = local_copy(path)
    if encoder_config.model_type == "whisper":
        encoder = WhisperModel.from_pretrained(local).get_encoder()
        positions = encoder_config.max_source_positions
        if positions < encoder.config.max_source_positions:  # a shorter window: the first rows of the table
            # in place: the loaded parameter keeps its "initialized" mark, so SpeechLM's post_init leaves it
            emb = encoder.embed_positions
            emb.weight.data = emb.weight.data[:positions].clone()
            emb.num_embeddings = positions
            encoder.config.max_source_positions = positions
        return AudioEncoder(encoder)
    return AudioEncoder(AutoModel.from_pretrained(local))
