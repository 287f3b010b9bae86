"""Audio in medlm: the one decode + resample path, shared by the data shards, the model's inputs and the API.

* :func:`as_waveform`: samples in memory (any rate) -> mono float32 at 16 kHz (soxr), with input checks;
* :func:`decode`: encoded bytes (WAV, FLAC, ...; soundfile) -> the same, with the checks a shard row or an
  API upload needs (length limits, declared rate, container, truncation, silence);
* :func:`encode`: a waveform as file bytes.

Every rejection is an :class:`AudioError` with a machine-readable ``reason``; the data plane turns it into a
quarantined :class:`~medlm.data.schema.BadRecord`, the API into a 400.
"""

from __future__ import annotations

import io

import numpy as np

SAMPLING_RATE = 16000


class AudioError(ValueError):
    """Audio that cannot be used: ``reason`` (e.g. ``audio_too_long``) and a message for people."""

    def __init__(self, reason: str, message: str, detail: str = ""):
        super().__init__(message)
        self.reason, self.message, self.detail = reason, message, detail


def resample(wav: np.ndarray, rate: int, target: int = SAMPLING_RATE) -> np.ndarray:
    """``wav`` at ``rate`` Hz -> float32 at ``target`` Hz (soxr, high quality)."""
    if rate != target:
        import soxr

        wav = soxr.resample(wav, rate, target, quality="HQ")
    return np.ascontiguousarray(wav, dtype=np.float32)


def as_waveform(audio, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Mono float32 16 kHz samples from a numpy array (resampled if needed); clear errors."""
    wav = np.asarray(audio)
    if wav.ndim == 2 and 1 in wav.shape:
        wav = wav.reshape(-1)
    if wav.ndim != 1:
        raise AudioError("not_mono", f"audio must be mono (1-D), got shape {wav.shape}")
    if wav.size == 0:
        raise AudioError("empty_audio", "audio is empty")
    if not np.issubdtype(wav.dtype, np.floating):
        raise AudioError("not_float", f"audio must be float samples in [-1, 1], got dtype {wav.dtype}")
    wav = wav.astype(np.float32, copy=False)
    if not np.all(np.isfinite(wav)):
        raise AudioError("corrupt_audio", "audio contains NaN or inf", "non-finite samples")
    return resample(wav, int(sampling_rate))


def decode(
    raw: bytes | None,
    *,
    max_seconds: float | None = None,
    declared_rate: int | None = None,
    formats: tuple[str, ...] | None = None,
    expected_format: str | None = None,
    min_rate: int = 0,
    min_seconds: float = 0.0,
    reject_silence: bool = False,
) -> np.ndarray:
    """Encoded audio -> mono float32 at 16 kHz (channels averaged), or :class:`AudioError`.

    ``formats``: accepted containers, lower-case (``("wav", "flac")``; None = any soundfile reads);
    ``expected_format``: what the sender declared; ``declared_rate``: the rate a shard row states;
    ``min_rate``, ``min_seconds``, ``reject_silence``: what a training row must have."""
    import soundfile as sf

    if not raw:
        raise AudioError("missing_audio", "audio is empty")
    try:
        f = sf.SoundFile(io.BytesIO(raw))
    except Exception as e:  # noqa: BLE001 - soundfile raises several types for undecodable input
        hint = f": send a {' or '.join(x.upper() for x in formats)} file" if formats else ""
        raise AudioError("corrupt_audio", f"audio could not be decoded{hint}", type(e).__name__) from None
    with f:
        fmt, rate, frames = f.format.lower(), f.samplerate, f.frames
        if formats is not None and fmt not in formats:
            raise AudioError(
                "unsupported_format",
                f"audio container {f.format} is not supported: send "
                f"{' or '.join(x.upper() for x in formats)}",
            )
        if expected_format is not None and fmt != expected_format:
            raise AudioError("format_mismatch", f"audio is declared as {expected_format} but is {fmt}")
        if frames <= 0 or rate <= 0:
            raise AudioError("empty_audio", "audio has no samples", f"{frames} frames")
        if max_seconds is not None and frames / rate > max_seconds:
            raise AudioError(
                "audio_too_long",
                f"audio is {frames / rate:.1f} s long; the limit is {max_seconds:g} s",
                f"{frames / rate:.1f}s > {max_seconds}s",
            )
        try:
            audio = f.read(dtype="float32", always_2d=True)
        except Exception as e:  # noqa: BLE001 - the header is fine but the stream ends early / is damaged
            raise AudioError(
                "truncated_audio", "audio could not be decoded (truncated)", type(e).__name__
            ) from None
    if audio.shape[0] < frames:
        raise AudioError("truncated_audio", "audio is truncated", f"{audio.shape[0]} of {frames} frames")
    if declared_rate is not None and rate != int(declared_rate):
        raise AudioError(
            "sample_rate_mismatch",
            f"audio is {rate} Hz, declared {declared_rate} Hz",
            f"file {rate} Hz, row {declared_rate} Hz",
        )
    if rate < min_rate:
        raise AudioError(
            "sample_rate_too_low", f"audio sample rate {rate} Hz is below {min_rate} Hz", f"{rate} Hz"
        )
    audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if audio.shape[0] < min_seconds * rate or (reject_silence and not np.any(audio)):
        raise AudioError("empty_audio", "audio is empty or silent", f"{audio.shape[0]} samples")
    if not np.all(np.isfinite(audio)):
        raise AudioError("corrupt_audio", "audio contains non-finite samples", "non-finite samples")
    return resample(audio, rate)


def pcm16(wave: np.ndarray) -> bytes:
    """Raw little-endian 16-bit samples (what streaming clients concatenate)."""
    return (np.clip(np.asarray(wave, dtype=np.float32), -1, 1) * 32767).astype("<i2").tobytes()


def encode(
    wave: np.ndarray, sample_rate: int = SAMPLING_RATE, fmt: str = "WAV", subtype: str | None = None
) -> bytes:
    """A waveform as file bytes (WAV, FLAC, ...)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(wave, dtype=np.float32), int(sample_rate), format=fmt, subtype=subtype)
    return buf.getvalue()
