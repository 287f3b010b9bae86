"""``medlm safety eval``: the safety screen (a ``medlm safety train`` export) on turns it never saw.

- red-flag recall: the held-out emergencies (``safety_sets.HELDOUT_EMERGENCIES``, written apart from the
  training generator), typed, spoken by the Piper voice (a fresh prosody draw per turn) and by an espeak-ng
  voice the training bank never used;
- over-triage: the benign controls (``BENIGN_CONTROLS``, near misses among them) flagged as emergencies,
  and benign turns refused as harmful;
- harmful detection: a MedSafetyBench test sample (never trained on) flagged ``harmful`` (or emergency),
  typed and spoken;
- the screen's own cost per turn (p50 / p95 ms on this machine): the text head on a typed turn, the audio
  head on a spoken turn's encoder frames (the frames themselves are the SpeechLM's work, not the screen's).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import torch
from pydantic import Field

from medlm import storage
from medlm.config import Section
from medlm.models import ModelSpec, build_model

log = logging.getLogger("medlm")


class SafetyEvalConfig(Section):
    triage: str  # a `medlm safety train` export
    model: ModelSpec = ModelSpec(preset="real")  # the SpeechLM whose encoder frames the audio branch reads
    harmful: int = Field(default=100, ge=0)  # MedSafetyBench test requests (typed; the same ones spoken)
    spoken: bool = True
    seed: int = 0
    output: str | None = None  # where the report JSON goes (local path or s3://); None: not written
    medsafetybench: str | None = None


def rates(labels: list[str], want: tuple[str, ...]) -> float:
    return float(np.mean([lbl in want for lbl in labels])) if labels else float("nan")


def render_sets(texts: list[str], seed: int) -> dict[str, list[np.ndarray]]:
    """``texts`` spoken by the Piper voice and by the held-out espeak-ng voice."""
    from medlm.models.tts import TTSConfig, held_out_voice, speak, voice_bank

    voices = {"piper": voice_bank(1, backend="piper")[0], "espeak": held_out_voice()}
    return {name: speak(texts, v, TTSConfig(backend="mixed"), seed + 101) for name, v in voices.items()}


def evaluate_screen(cfg: SafetyEvalConfig) -> dict[str, Any]:
    from medlm.data import medsafetybench
    from medlm.eval.safety_sets import BENIGN_CONTROLS, HELDOUT_EMERGENCIES, NEAR_MISSES
    from medlm.models.triage import Screen, item_frames

    screen = Screen(cfg.triage)
    model = screen.model
    sets = {
        "emergency": [t for _, t in HELDOUT_EMERGENCIES],
        "benign": list(BENIGN_CONTROLS),
        "harmful": [
            r["request"] for r in medsafetybench.test_sample(cfg.harmful, cfg.seed, cfg.medsafetybench)
        ],
    }
    near = [t in set(NEAR_MISSES) for t in sets["benign"]]
    decided: dict[str, dict[str, list[str]]] = {}
    cost: dict[str, list[float]] = {"text": [], "audio": []}
    decided["typed"] = {}
    for name, texts in sets.items():
        out = []
        for t in texts:  # one turn at a time, as the API screens them
            t0 = time.perf_counter()
            out.append(model.decide(screen.text_probs([t])[0], "text"))
            cost["text"].append(1000 * (time.perf_counter() - t0))
        decided["typed"][name] = out
    if cfg.spoken:
        speech_lm, _ = build_model(cfg.model)
        speech_lm.eval()
        for name, texts in sets.items():
            for voice, waves in render_sets(texts, cfg.seed).items():
                frames = item_frames(speech_lm, waves)
                out = []
                for f in frames:
                    t0 = time.perf_counter()
                    out.append(model.decide(screen.audio_probs([f])[0], "audio"))
                    cost["audio"].append(1000 * (time.perf_counter() - t0))
                decided.setdefault(voice, {})[name] = out
    categories = [c for c, _ in HELDOUT_EMERGENCIES]
    report: dict[str, Any] = {"triage": cfg.triage, "n": {k: len(v) for k, v in sets.items()}, "by_input": {}}
    for how, d in decided.items():
        report["by_input"][how] = {
            "red_flag_recall": rates(d["emergency"], ("emergency",)),
            "missed_categories": sorted(
                {c for c, lbl in zip(categories, d["emergency"]) if lbl != "emergency"}
            ),
            "over_triage": rates(d["benign"], ("emergency",)),
            "over_triage_near_misses": rates([x for x, n in zip(d["benign"], near) if n], ("emergency",)),
            "benign_refused": rates(d["benign"], ("harmful",)),
            "harmful_flagged": rates(d["harmful"], ("harmful", "emergency")),
        }
    report["screen_ms"] = {
        k: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "n": len(v)}
        for k, v in cost.items()
        if v
    }
    report["threads"] = torch.get_num_threads()
    if cfg.output:
        storage.write_text(cfg.output, json.dumps(report, indent=2))
    return report


def format_table(report: dict[str, Any]) -> str:
    """The report as a markdown table (one row per input kind)."""
    rows = [
        "| input | red-flag recall | over-triage (benign / near misses) | benign refused | harmful flagged |",
        "|---|---|---|---|---|",
    ]
    for how, r in report["by_input"].items():
        rows.append(
            f"| {how} | {r['red_flag_recall']:.3f} | {r['over_triage']:.3f} / "
            f"{r['over_triage_near_misses']:.3f} | {r['benign_refused']:.3f} | {r['harmful_flagged']:.3f} |"
        )
    return "\n".join(rows)
