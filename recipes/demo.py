"""The demo (``python -m recipes.demo``, ``./scripts/demo.sh``): the whole path on embedded defaults, one step
after another.

make data -> stage 1 (text knowledge) -> stage 2 (speech alignment; on the real preset, on the stage-1 model's
own answers to the spoken rows' transcripts) -> serve (Ray Serve) -> a
spoken question in a voice the training never used, answered over the OpenAI-compatible HTTP API end to
end, as text and through the cascade (whisper-tiny.en transcribes, the same LLM answers). Everything runs
for real: local Ray, the moto S3 server, DeepSpeed on 2 CPU workers, Piper and espeak-ng speech, the real
checkpoints (preset ``real``, the default; ``tiny`` is the minutes-long toy the tests use). The presets are
``configs/presets/demo-<name>.yaml`` (:mod:`recipes.presets`).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import typer

from recipes.presets import load_preset

log = logging.getLogger("medlm.demo")


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


def _spoken_question(data_cfg) -> tuple[str, str, str, Any, int, str]:
    """A question about a fact that stage 2 never heard as speech, spoken by a synthetic patient whose voice
    the training data never used (an en-us espeak-ng voice of the bank beyond the ones make_data drew)."""
    from medlm.audio import SAMPLING_RATE
    from medlm.data import kb
    from medlm.data.factory import speech_conditions
    from medlm.models.tts import espeak_voices, speak, voice_bank

    heard = speech_conditions(data_cfg)
    pair = next(p for p in kb.qa_pairs(data_cfg.seed) if p["condition"] not in heard)
    n = data_cfg.tts.num_voices
    used = {v.id for v in voice_bank(n, data_cfg.seed, data_cfg.tts.backend, data_cfg.tts.piper_voice)}
    voice = next(
        v for v in espeak_voices(2 * n + 1, data_cfg.seed + 1) if v.id not in used and v.accent == "en-us"
    )
    topic = next(c.name for c in kb.ALL_CONDITIONS if c.id == pair["condition"])
    audio = speak([pair["question"]], voice)[0]
    return pair["question"], pair["answer"], topic, audio, SAMPLING_RATE, voice.id


def _ask(client, content, model: str = "medlm", max_tokens: int = 48, **kw) -> tuple[str, float, Any]:
    """-> (answer, seconds, the spoken reply or None)."""
    t = time.perf_counter()
    reply = client.chat.completions.create(
        model=model,
        max_tokens=max_tokens,
        temperature=0.0,
        messages=[{"role": "user", "content": content}],
        **kw,
    )
    message = reply.choices[0].message
    return message.content, time.perf_counter() - t, message.audio


def run_demo(preset: str = "real", workdir: str | None = None) -> dict[str, Any]:
    from openai import OpenAI
    from ray import serve

    from medlm import storage
    from medlm.data.factory import format_summary, make_data
    from medlm.eval.metrics import names_topic
    from medlm.jobs import embedded_s3_needed
    from medlm.serving import run_local
    from medlm.stack import free_port, local_stack
    from medlm.train import train

    p = load_preset("demo", preset)
    progress = _Progress(5)
    summary: dict[str, Any] = {"preset": preset}
    with local_stack(s3=embedded_s3_needed()) as st:
        root = workdir or storage.join(st.root, f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
        data_root, runs = storage.join(root, "data"), storage.join(root, "runs")
        summary["root"] = root

        with progress.step("make synthetic data (knowledge base, TTS voices, CT volumes)"):
            data_cfg = p.data_config(data_root)
            data = make_data(data_cfg)
            print(format_summary(data))
            summary["data"] = {k: v["rows"] for k, v in data["datasets"].items()}
            summary["audio_hours"] = round(data["audio_hours"], 3)

        with progress.step("stage 1: medical knowledge from text (Ray Train + DeepSpeed ZeRO-2, 2 workers)"):
            s1 = train(p.train_config("stage1", "run.name=stage1", data_root=data_root, storage_path=runs))
            summary["stage1"] = {"export": s1["export"], "loss": _loss(s1)}

        with progress.step("stage 2: speech alignment from the stage-1 model"):
            # the adapter's CTC alignment first where the preset has one, then stage 2, each from the last;
            # stage 2's targets are the stage-1 model's own answers to the transcripts (where its config says)
            s2 = s1
            for job in (["align"] if "align" in p.jobs else []) + ["stage2"]:
                name = "stage2" if job == "stage2" else "stage2-align"
                targets = p.self_answers(job, s1["export"], data_root, storage.join(runs, "stage1-answers"))
                s2 = train(
                    p.train_config(
                        job,
                        f"run.name={name}",
                        f"model.init_from={s2['export']}",
                        *targets,
                        data_root=data_root,
                        storage_path=runs,
                    )
                )
            summary["stage2"] = {"export": s2["export"], "loss": _loss(s2)}

        with progress.step("serve the stage-2 model (Ray Serve, OpenAI-compatible API)"):
            key = secrets.token_urlsafe(16)
            url = run_local(s2["export"], port=free_port(), api_key=key)
            summary["url"] = url

        try:
            with progress.step(
                "ask a spoken question over HTTP: end to end, as text, and through the cascade"
            ):
                question, expected, topic, audio, rate, voice = _spoken_question(data_cfg)
                client = OpenAI(base_url=url, api_key=key)
                wav = _wav_base64(audio, rate)
                part = [{"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}]
                models = {m.id: m for m in client.models.list().data}
                voices = (models["medlm"].model_extra or {}).get("voices") or []
                spoken_out = (
                    {"modalities": ["text", "audio"], "audio": {"voice": voices[0], "format": "wav"}}
                    if voices
                    else {}
                )
                spoken, t_spoken, reply_audio = _ask(client, part, **spoken_out)  # answered in speech too
                text, t_text, _ = _ask(client, question)
                answers = {
                    "spoken (end to end)": (spoken, t_spoken),
                    "text (the question typed)": (text, t_text),
                }
                heard = None
                if "cascade" in models:
                    heard = client.audio.transcriptions.create(
                        model="whisper-tiny.en", file=("question.wav", base64.b64decode(wav))
                    ).text
                    cascade, t_cascade, _ = _ask(client, part, model="cascade")
                    answers["cascade (whisper-tiny.en -> same LLM)"] = (cascade, t_cascade)
                print(
                    f"  spoken question ({len(audio) / rate:.1f}s, voice {voice}, never used in training): "
                    f"{question}"
                )
                if heard is not None:
                    print(f"  whisper-tiny.en heard: {heard}")
                print(f"  knowledge-base answer: {expected}")
                for name, (a, dt) in answers.items():
                    print(f"  {name:40s} [{dt:4.1f}s] {a}")
                on_topic = {name: names_topic(a, topic) for name, (a, _) in answers.items()}
                print(
                    f"  names the condition ({topic}): "
                    + ", ".join(
                        f"{name.split(' (')[0]} {'yes' if ok else 'no'}" for name, ok in on_topic.items()
                    )
                )
                if reply_audio is not None:
                    import soundfile as sf

                    path = Path(tempfile.gettempdir()) / "medlm-demo-answer.wav"
                    path.write_bytes(base64.b64decode(reply_audio.data))
                    seconds = sf.info(str(path)).duration
                    print(f"  the end-to-end answer, spoken ({voices[0]}, {seconds:.1f}s): {path}")
                    summary["spoken_reply"] = {
                        "voice": voices[0],
                        "seconds": round(seconds, 2),
                        "path": str(path),
                    }
                summary["question"] = {
                    "text": question,
                    "voice": voice,
                    "expected": expected,
                    "topic": topic,
                    "on_topic": on_topic,
                    "heard": heard,
                    "answers": {k: {"answer": a, "seconds": round(dt, 2)} for k, (a, dt) in answers.items()},
                }
        finally:
            serve.shutdown()
    summary["seconds"] = progress.times
    print("\nsummary: " + ", ".join(f"{k} {v}s" for k, v in progress.times.items()))
    return summary


def _loss(result: dict) -> float | None:
    metrics = result.get("metrics") or {}
    return round(metrics["loss"], 4) if "loss" in metrics else None


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    preset: str = typer.Option(
        "real",
        help="real (the pretrained parts, ~20 min on 2 cores), tiny (a "
        "random toy, ~4 min) or small (a bigger toy)",
    ),
    workdir: Optional[str] = typer.Option(None, help="where to keep the run's files (dir or s3://)"),
) -> None:
    """The whole path on embedded defaults: data -> stage 1 -> stage 2 -> serve ->
    a spoken question over HTTP."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = run_demo(preset=preset, workdir=workdir)
    typer.echo(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    app()
