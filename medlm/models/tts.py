"""Text-to-speech for synthetic patients: diverse voices, two engines, one helper.

A :class:`Voice` describes a patient-like voice: for espeak-ng an accent, gender and age group (-> pitch
and speed); for Piper a neural voice whose speed and prosody (``length_scale``, ``noise_scale``,
``noise_w_scale``) are drawn per utterance (:meth:`Voice.for_utterance`). :func:`voice_bank` draws a
seeded, diverse set for ``tts.backend``: ``espeak``, ``piper`` or ``mixed`` (both, alternating), so a
spoken dataset carries both synthesizers and each row's voice metadata says which engine and settings
made it. :func:`speak` is the one helper for "these texts as 16 kHz waveforms" (evaluation, CT, demo).

Licences: both engines stay at arm's length from medlm's Apache-2.0 code. espeak-ng (GPL-3.0) runs as a
separate process through its CLI; Piper voices run on onnxruntime (MIT) with medlm's own code, the
phonemes coming from the espeak-ng CLI; the GPL ``piper-tts`` package is not used.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import subprocess
import unicodedata
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from medlm.config import Section

ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan")
# espeak-ng variants: f1..f5 are female, m1..m7 male.
VARIANTS = {"female": ("f1", "f2", "f3", "f4", "f5"), "male": ("m1", "m2", "m3", "m4", "m5", "m7")}
AGES = {
    "young": (60, 75, 165, 185),
    "adult": (45, 60, 150, 170),
    "elderly": (25, 45, 115, 140),
}  # pitch, wpm ranges


# Piper prosody ranges drawn per utterance: speed (length_scale > 1 is slower), generator noise, and
# phoneme-duration noise; the voices' own defaults are 1.0 / 0.667 / 0.8.
PIPER_RANGES = {"length_scale": (0.85, 1.2), "noise_scale": (0.45, 0.85), "noise_w_scale": (0.5, 1.0)}


@dataclass(frozen=True)
class Voice:
    id: str
    accent: str
    gender: str
    age: str
    pitch: int = 50  # espeak-ng 0-99
    speed: int = 160  # espeak-ng words per minute
    engine: Literal["espeak", "piper"] = "espeak"
    length_scale: float | None = None  # Piper settings of one utterance (for_utterance)
    noise_scale: float | None = None
    noise_w_scale: float | None = None

    def for_utterance(self, rng: random.Random) -> Voice:
        """This voice for one utterance: Piper draws its speed and prosody; espeak-ng voices are fixed."""
        if self.engine != "piper":
            return self
        return replace(self, **{k: round(rng.uniform(lo, hi), 3) for k, (lo, hi) in PIPER_RANGES.items()})

    def meta(self) -> dict:
        keep = {"espeak": ("pitch", "speed"), "piper": tuple(PIPER_RANGES)}[self.engine]
        drop = {"pitch", "speed", *PIPER_RANGES} - set(keep)
        return {k: v for k, v in asdict(self).items() if k not in drop}


def espeak_voices(n: int, seed: int = 0) -> list[Voice]:
    """``n`` distinct espeak-ng voices cycling through accents, genders and age groups (seeded)."""
    rng = random.Random(seed)
    voices = []
    for i in range(n):
        gender = ("female", "male")[i % 2]
        age = tuple(AGES)[(i // 2) % len(AGES)]
        accent = ACCENTS[i % len(ACCENTS)]
        plo, phi, slo, shi = AGES[age]
        variant = rng.choice(VARIANTS[gender])
        voices.append(
            Voice(f"{accent}+{variant}", accent, gender, age, rng.randint(plo, phi), rng.randint(slo, shi))
        )
    return voices


PIPER_VOICES = {"piper-joe": Voice("piper:joe", "en-us", "male", "adult", engine="piper")}


def voice_bank(n: int, seed: int = 0, backend: str = "espeak", piper_voice: str = "piper-joe") -> list[Voice]:
    """``n`` voices for ``backend``: espeak-ng's bank, the Piper voice (one speaker; its utterances vary
    in speed and prosody), or ``mixed``: Piper and espeak-ng alternating (even indices Piper)."""
    piper = PIPER_VOICES.get(piper_voice) or Voice(
        f"piper:{Path(piper_voice).stem}", "en-us", "unknown", "adult", engine="piper"
    )
    if backend == "espeak":
        return espeak_voices(n, seed)
    if backend == "piper":
        return [piper] * n
    if backend == "mixed":
        espeak = iter(espeak_voices(n, seed))
        return [piper if i % 2 == 0 else next(espeak) for i in range(n)]
    raise ValueError(f"unknown TTS backend {backend!r} (espeak | piper | mixed)")


def held_out_voice(bank_size: int = 12, seed: int = 0) -> Voice:
    """An en-us espeak-ng voice that the training bank (``voice_bank(bank_size, seed, "mixed")``) never
    uses: the held-out voice of the benchmarks and evaluations."""
    used = {v.id for v in voice_bank(bank_size, seed, "mixed")}
    return next(v for v in espeak_voices(25, seed + 1) if v.id not in used and v.accent == "en-us")


class TTSConfig(Section):
    backend: Literal["espeak", "piper", "mixed"] = "mixed"
    num_voices: int = 12
    command: str = "espeak-ng"
    piper_voice: str = "piper-joe"  # a model store name (`medlm models fetch`) or a path to a Piper .onnx


class TTSBackend(Protocol):
    def synthesize(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        """``text`` spoken by ``voice`` -> (float32 mono audio, sample rate)."""


class EspeakTTS:
    """``espeak-ng`` through its CLI (``--stdout`` WAV); about 30 ms per sentence on one core."""

    def __init__(self, command: str = "espeak-ng"):
        if shutil.which(command) is None:
            raise RuntimeError(
                f"{command!r} not found; install it (apt-get install espeak-ng) or pick another TTS backend"
            )
        self.command = command

    def synthesize(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        import soundfile as sf

        if not text.strip():
            raise ValueError("cannot synthesise empty text")
        proc = subprocess.run(
            [self.command, "-v", voice.id, "-p", str(voice.pitch), "-s", str(voice.speed), "--stdout", text],
            capture_output=True,
            check=False,
            timeout=60,
        )
        if proc.returncode != 0 or not proc.stdout:
            raise RuntimeError(
                f"espeak-ng failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[:200]}"
            )
        audio, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        return audio, rate


class PiperTTS:
    """A Piper voice (VITS, ONNX) run with onnxruntime; phonemes from the espeak-ng CLI.

    Piper's input contract (its ``.onnx.json``): the text's espeak-ng IPA, split into Unicode code points
    (NFD), each clause followed by its punctuation; ids = BOS, PAD, then each phoneme's id followed by PAD,
    then EOS; ``scales`` = [noise_scale, length_scale, noise_w_scale]. One inference per sentence, each
    peak-normalised as Piper does. About 10x faster than real time on one core. The voice samples noise
    inside its graph (``noise_scale``, ``noise_w_scale``), so the same text and settings render slightly
    differently each time: Piper rows of a dataset are not bit-reproducible (espeak-ng rows are)."""

    def __init__(self, voice: str = "piper-joe", command: str = "espeak-ng"):
        import onnxruntime as ort

        self.onnx = piper_onnx(voice)
        self.config = json.loads(Path(f"{self.onnx}.json").read_text())
        if self.config.get("phoneme_type", "espeak") != "espeak":
            raise ValueError(
                f"{self.onnx}: phoneme type {self.config['phoneme_type']!r}; only espeak voices are supported"
            )
        if shutil.which(command) is None:
            raise RuntimeError(
                f"{command!r} not found (Piper's phonemes come from it): apt-get install espeak-ng"
            )
        self.command, self.id_map = command, self.config["phoneme_id_map"]
        self.sample_rate = int(self.config["audio"]["sample_rate"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS") or 1)
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.onnx), opts, providers=["CPUExecutionProvider"])

    def phonemes(self, text: str) -> list[list[str]]:
        """Text -> one phoneme list per sentence (espeak-ng IPA code points with clause punctuation)."""
        proc = subprocess.run(
            [self.command, "-q", "--ipa", "-v", self.config["espeak"]["voice"], "--stdin"],
            input=text.encode(),
            capture_output=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"espeak-ng failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[:200]}"
            )
        clauses = [re.sub(r"\([^)]+\)", "", line).strip() for line in proc.stdout.decode().splitlines()]
        clauses = [c for c in clauses if c]
        marks = re.findall(r"[.,;:!?]+(?=\s|$)", text.strip())
        if len(marks) == len(clauses) - 1 and not re.search(r"[.!?]$", text.strip()):
            marks.append(".")
        if len(marks) != len(clauses):  # espeak split differently (abbreviations, numbers): one sentence
            clauses, marks = [" ".join(clauses)], [(marks or ["."])[-1]]
        sentences, current = [], []
        for clause, mark in zip(clauses, marks):
            current += list(
                unicodedata.normalize("NFD", clause + mark[-1] + (" " if mark[-1] in ",;:" else ""))
            )
            if mark[-1] in ".!?":
                sentences.append(current)
                current = []
        if current:
            sentences.append(current)
        return sentences

    def ids(self, phonemes: list[str]) -> list[int]:
        ids = [*self.id_map["^"], *self.id_map["_"]]
        for p in phonemes:
            if p in self.id_map:
                ids += [*self.id_map[p], *self.id_map["_"]]
        return ids + self.id_map["$"]

    def synthesize(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        if not text.strip():
            raise ValueError("cannot synthesise empty text")
        inference = self.config.get("inference", {})
        scales = np.array(
            [
                voice.noise_scale or inference.get("noise_scale", 0.667),
                voice.length_scale or inference.get("length_scale", 1.0),
                voice.noise_w_scale or inference.get("noise_w", 0.8),
            ],
            dtype=np.float32,
        )
        pieces = []
        for sentence in self.phonemes(text):
            ids = np.asarray([self.ids(sentence)], dtype=np.int64)
            audio = self.session.run(
                None,
                {"input": ids, "input_lengths": np.array([ids.shape[1]], dtype=np.int64), "scales": scales},
            )[0].reshape(-1)
            peak = float(np.abs(audio).max())
            pieces.append(np.clip(audio / peak, -1, 1) if peak > 1e-8 else np.zeros_like(audio))
        return np.concatenate(pieces).astype(np.float32), self.sample_rate


def piper_onnx(voice: str) -> Path:
    """A Piper voice: a model store name (its one .onnx file) or a path to the .onnx (with .onnx.json
    beside)."""
    from medlm.models.pretrained import store_path

    path = Path(store_path(voice))
    if path.is_dir():
        found = sorted(path.glob("*.onnx"))
        if len(found) != 1:
            raise FileNotFoundError(f"model store entry {voice} holds {len(found)} .onnx files, expected 1")
        path = found[0]
    if not path.is_file() or not Path(f"{path}.json").is_file():
        raise FileNotFoundError(f"Piper voice {voice!r}: need {path} and {path}.json")
    return path


class MultiTTS:
    """Dispatches each voice to its engine, created on first use."""

    def __init__(self, cfg: TTSConfig):
        self.cfg, self.engines = cfg, {}

    def engine(self, name: str) -> TTSBackend:
        if name not in self.engines:
            self.engines[name] = (
                EspeakTTS(self.cfg.command)
                if name == "espeak"
                else PiperTTS(self.cfg.piper_voice, self.cfg.command)
            )
        return self.engines[name]

    def synthesize(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        return self.engine(voice.engine).synthesize(text, voice)


def build_tts(cfg: TTSConfig) -> TTSBackend:
    return MultiTTS(cfg)


def speak(texts: list[str], voice: Voice, cfg: TTSConfig | None = None, seed: int = 0) -> list[np.ndarray]:
    """``texts`` spoken by ``voice`` (Piper prosody drawn per text, seeded) as 16 kHz mono float32."""
    from medlm.models.encoder import as_waveform

    tts, rng = build_tts(cfg or TTSConfig()), random.Random(seed)
    return [as_waveform(*tts.synthesize(t, voice.for_utterance(rng))) for t in texts]
