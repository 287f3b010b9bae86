"""Text-to-speech for synthetic patients: diverse voices, pluggable backends.

A :class:`Voice` describes a patient-like voice (accent, gender, age group -> pitch and speed).
:func:`voice_bank` draws a seeded, diverse set; :class:`EspeakTTS` (the embedded default) renders
text with the ``espeak-ng`` CLI. Another engine plugs in by implementing :class:`TTSBackend`.
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

import numpy as np

from medlm.config import Section

ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan")
# espeak-ng variants: f1..f5 are female, m1..m7 male.
VARIANTS = {"female": ("f1", "f2", "f3", "f4", "f5"), "male": ("m1", "m2", "m3", "m4", "m5", "m7")}
AGES = {"young": (60, 75, 165, 185), "adult": (45, 60, 150, 170), "elderly": (25, 45, 115, 140)}  # pitch, wpm ranges


@dataclass(frozen=True)
class Voice:
    id: str
    accent: str
    gender: str
    age: str
    pitch: int   # espeak-ng 0-99
    speed: int   # words per minute

    def meta(self) -> dict:
        return asdict(self)


def voice_bank(n: int, seed: int = 0) -> list[Voice]:
    """``n`` distinct voices cycling through accents, genders and age groups (seeded)."""
    rng = random.Random(seed)
    voices = []
    for i in range(n):
        gender = ("female", "male")[i % 2]
        age = tuple(AGES)[(i // 2) % len(AGES)]
        accent = ACCENTS[i % len(ACCENTS)]
        plo, phi, slo, shi = AGES[age]
        variant = rng.choice(VARIANTS[gender])
        voices.append(Voice(f"{accent}+{variant}", accent, gender, age, rng.randint(plo, phi), rng.randint(slo, shi)))
    return voices


class TTSConfig(Section):
    backend: Literal["espeak"] = "espeak"
    num_voices: int = 12
    command: str = "espeak-ng"


class TTSBackend(Protocol):
    def synthesize(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        """``text`` spoken by ``voice`` -> (float32 mono audio, sample rate)."""


class EspeakTTS:
    """``espeak-ng`` through its CLI (``--stdout`` WAV); about 30 ms per sentence on one core."""

    def __init__(self, command: str = "espeak-ng"):
        if shutil.which(command) is None:
            raise RuntimeError(f"{command!r} not found; install it (apt-get install espeak-ng) or pick another TTS backend")
        self.command = command

    def synthesize(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        import soundfile as sf

        if not text.strip():
            raise ValueError("cannot synthesise empty text")
        proc = subprocess.run(
            [self.command, "-v", voice.id, "-p", str(voice.pitch), "-s", str(voice.speed), "--stdout", text],
            capture_output=True, check=False, timeout=60)
        if proc.returncode != 0 or not proc.stdout:
            raise RuntimeError(f"espeak-ng failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[:200]}")
        audio, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        return audio, rate


def build_tts(cfg: TTSConfig) -> TTSBackend:
    return EspeakTTS(cfg.command)
