"""``medlm demo``: the whole path on embedded defaults, one step after another.

make data -> stage 1 (text knowledge) -> stage 2 (speech alignment) -> serve (Ray Serve) -> a
spoken question answered over the OpenAI-compatible HTTP API. Everything runs for real: local
Ray, the moto S3 server, DeepSpeed on 2 CPU workers, espeak-ng speech, Ray Serve over HTTP.
"""

from __future__ import annotations

import base64
import io
import logging
import secrets
import time
from typing import Any

log = logging.getLogger("medlm.demo")

# How much data and training each preset gets (the model preset has the same name).
SIZES = {
    "tiny": {"data": [], "steps": 30},
    "small": {"data": ["consultations=400", "speech_consultations=120", "utterances=200"], "steps": 300},
}


class _Progress:
    def __init__(self, total: int):
        self.total, self.i, self.t0, self.times = total, 0, time.time(), {}

    def step(self, title: str):
        self.i += 1
        self._title, self._start = title, time.time()
        print(f"\n[{self.i}/{self.total}] {title} ...", flush=True)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        dt = time.time() - self._start
        self.times[self._title] = round(dt, 1)
        if exc[0] is None:
            print(f"[{self.i}/{self.total}] {self._title}: done in {dt:.1f}s", flush=True)


def _wav_base64(audio, rate: int) -> str:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


def _spoken_question(data_cfg) -> tuple[str, str, Any, int]:
    """A question about a fact that stage 2 never heard as speech, spoken by a synthetic patient."""
    from medlm.data import kb
    from medlm.data.factory import speech_conditions
    from medlm.data.tts import SAMPLING_RATE, speak, voice_bank

    heard = speech_conditions(data_cfg)
    pair = next(p for p in kb.qa_pairs(data_cfg.seed) if p["condition"] not in heard)
    voice = voice_bank(3, data_cfg.seed, backend="espeak")[1]
    return pair["question"], pair["answer"], speak([pair["question"]], voice)[0], SAMPLING_RATE


def run_demo(preset: str = "tiny", workdir: str | None = None) -> dict[str, Any]:
    from openai import OpenAI
    from ray import serve

    from medlm import storage
    from medlm.config import load_config
    from medlm.data.factory import MakeDataConfig, format_summary, make_data
    from medlm.jobs import embedded_s3_needed
    from medlm.serving import run_local
    from medlm.stack import free_port, local_stack
    from medlm.train import TrainJobConfig, train

    if preset not in SIZES:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(SIZES)}")
    size = SIZES[preset]
    progress = _Progress(5)
    summary: dict[str, Any] = {"preset": preset}
    with local_stack(s3=embedded_s3_needed()) as st:
        root = workdir or storage.join(st.root, f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
        data_root = storage.join(root, "data")
        summary["root"] = root

        with progress.step("make synthetic data (knowledge base, TTS voices, CT volumes)"):
            data_cfg = load_config(MakeDataConfig, "make_data.yaml", [f"output={data_root}", *size["data"]])
            data = make_data(data_cfg)
            print(format_summary(data))
            summary["data"] = {k: v["rows"] for k, v in data["datasets"].items()}
            summary["audio_hours"] = round(data["audio_hours"], 3)

        common = [f"model.preset={preset}", f"data.root={data_root}", f"run.storage_path={storage.join(root, 'runs')}",
                  f"optim.steps={size['steps']}"]
        with progress.step("stage 1: medical knowledge from text (Ray Train + DeepSpeed ZeRO-2, 2 workers)"):
            s1 = train(load_config(TrainJobConfig, "stage1.yaml", [*common, "run.name=stage1"]))
            summary["stage1"] = {"export": s1["export"], "loss": _loss(s1)}

        with progress.step("stage 2: speech alignment from the stage-1 model"):
            s2 = train(load_config(TrainJobConfig, "stage2.yaml",
                                   [*common, "run.name=stage2", f"model.init_from={s1['export']}"]))
            summary["stage2"] = {"export": s2["export"], "loss": _loss(s2)}

        with progress.step("serve the stage-2 model (Ray Serve, OpenAI-compatible API)"):
            key = secrets.token_urlsafe(16)
            url = run_local(s2["export"], port=free_port(), api_key=key)
            summary["url"] = url

        try:
            with progress.step("ask a spoken question over HTTP"):
                question, expected, audio, rate = _spoken_question(data_cfg)
                client = OpenAI(base_url=url, api_key=key)
                reply = client.chat.completions.create(
                    model="medlm", max_tokens=32, temperature=0.0,
                    messages=[{"role": "user", "content": [
                        {"type": "input_audio", "input_audio": {"data": _wav_base64(audio, rate), "format": "wav"}}]}])
                answer = reply.choices[0].message.content
                print(f"  spoken question ({len(audio) / rate:.1f}s of synthetic speech): {question}")
                print(f"  expected answer: {expected}")
                print(f"  model answer:    {answer}")
                summary["question"] = {"text": question, "expected": expected, "answer": answer,
                                       "usage": reply.usage.model_dump() if reply.usage else None}
        finally:
            serve.shutdown()
    summary["seconds"] = progress.times
    print("\nsummary: " + ", ".join(f"{k} {v}s" for k, v in progress.times.items()))
    return summary


def _loss(result: dict) -> float | None:
    metrics = result.get("metrics") or {}
    return round(metrics["loss"], 4) if "loss" in metrics else None
