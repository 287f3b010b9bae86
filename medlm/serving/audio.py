"""Decode client audio (base64 or raw WAV / FLAC bytes) to float32 mono 16 kHz, within limits."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import soundfile as sf
import soxr

from medlm.serving.errors import APIError

SAMPLE_RATE = 16000
FORMATS = {"WAV": "wav", "FLAC": "flac"}


def decode_base64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "audio data is not valid base64", param=param, code="invalid_audio") from None


def decode_audio(raw: bytes, max_seconds: float, param: str, expected_format: str | None = None) -> np.ndarray:
    """WAV / FLAC bytes -> float32 mono waveform at 16 kHz; 400 for anything else or too long."""
    if not raw:
        raise APIError(400, "audio is empty", param=param, code="invalid_audio")
    try:
        info = sf.info(io.BytesIO(raw))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        raise APIError(400, "audio could not be decoded: send a WAV or FLAC file", param=param,
                       code="invalid_audio") from None
    fmt = FORMATS.get(info.format)
    if fmt is None:
        raise APIError(400, f"audio container {info.format} is not supported: send WAV or FLAC", param=param,
                       code="invalid_audio")
    if expected_format is not None and fmt != expected_format:
        raise APIError(400, f"audio is declared as {expected_format} but is {fmt}", param=param,
                       code="invalid_audio")
    if info.frames <= 0 or info.samplerate <= 0:
        raise APIError(400, "audio has no samples", param=param, code="invalid_audio")
    seconds = info.frames / info.samplerate
    if seconds > max_seconds:
        raise APIError(400, f"audio is {seconds:.1f} s long; the limit is {max_seconds:g} s", param=param,
                       code="audio_too_long")
    try:
        wave, sr = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError):
        raise APIError(400, "audio could not be decoded", param=param, code="invalid_audio") from None
    wave = wave.mean(axis=1)
    if not np.isfinite(wave).all():
        raise APIError(400, "audio contains non-finite samples", param=param, code="invalid_audio")
    if sr != SAMPLE_RATE:
        wave = soxr.resample(wave, sr, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def encode_wav(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, fmt: str = "WAV") -> bytes:
    """A waveform as WAV (or FLAC) file bytes: what clients send."""
    buf = io.BytesIO()
    sf.write(buf, wave, sample_rate, format=fmt)
    return buf.getvalue()
