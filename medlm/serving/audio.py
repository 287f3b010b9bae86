"""Decode client audio (base64 or raw WAV / FLAC bytes) to float32 mono 16 kHz, within limits."""

from __future__ import annotations

import base64
import binascii

import numpy as np

from medlm import audio as audio_io
from medlm.serving.errors import APIError

FORMATS = ("wav", "flac")


def decode_base64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "audio data is not valid base64", param=param, code="invalid_audio") from None


def decode_audio(
    raw: bytes, max_seconds: float, param: str, expected_format: str | None = None
) -> np.ndarray:
    """WAV / FLAC bytes -> float32 mono waveform at 16 kHz (:func:`medlm.audio.decode`); 400 for anything
    else or too long."""
    try:
        return audio_io.decode(raw, max_seconds=max_seconds, formats=FORMATS, expected_format=expected_format)
    except audio_io.AudioError as e:
        code = "audio_too_long" if e.reason == "audio_too_long" else "invalid_audio"
        raise APIError(400, e.message, param=param, code=code) from None


def encode_wav(wave: np.ndarray, sample_rate: int = audio_io.SAMPLING_RATE, fmt: str = "WAV") -> bytes:
    """A waveform as WAV (or FLAC) file bytes: what clients send."""
    return audio_io.encode(wave, sample_rate, fmt)
