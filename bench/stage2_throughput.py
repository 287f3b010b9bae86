"""Where a stage-2 step's time goes, live vs on cached frozen work (real preset, one process, this machine).

    python bench/stage2_throughput.py --data <make_data output> [--init-from <stage-1 export>] [--batches 4]

The same spoken examples (``sentences`` + ``qa_speech`` rows of a ``make_data`` output, or their
self-answer sets) go through the stage-2 steps of the real recipes, the model in bf16 as DeepSpeed trains it,
adapter only:

* **CTC step** (``configs/stage2_ctc_real.yaml``: 16 rows, ``ctc_weight`` 1, no LLM forward)
* **KD step** (``configs/stage2_real.yaml``: 8 rows, KD from the text-fed LLM + LM 0.2 + CTC 0.5)
* **self step** (``configs/stage2_self_real.yaml``, the real recipe's answer step since 2026-12-07: 8 rows of
  ``sentences_self`` + ``qa_speech_self``, written first by ``medlm data self-answers``; CE on the stage-1
  model's own answers + CTC 0.5, no teacher pass)

each **live** (the featurizer decodes the audio and computes log-mel features, the frozen encoder runs in the
step) and **cached** (the featurizer reads the encoder frames ``medlm.data.encoder_cache`` stored; the step
starts at the adapter). Each phase is timed on its own: featurize (per batch, one CPU), encoder forward,
the rest of forward + backward (adapter, CTC head, LLM, KD teacher), optimizer step. Prints a Markdown
table of seconds per batch by phase and examples per second of a whole step, and the one-off cost of
computing the frames. A training job overlaps featurizing with the step on other cores (Ray Data actors);
on this 2-core box they compete, so the whole-step column adds them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from medlm import storage  # noqa: E402
from medlm.audio import SAMPLING_RATE  # noqa: E402
from medlm.config import load_config  # noqa: E402
from medlm.data.encoder_cache import encode, recordings  # noqa: E402
from medlm.data.frames import pack  # noqa: E402
from medlm.data.io import iter_rows  # noqa: E402
from medlm.data.pipeline import Featurizer  # noqa: E402
from medlm.models import build_model  # noqa: E402
from medlm.models.build import build_encoder  # noqa: E402
from medlm.models.encoder import encoder_fingerprint  # noqa: E402
from medlm.train.config import TrainJobConfig  # noqa: E402

# step -> (config, rows per batch, the two datasets its rows alternate between: (name, kind, task))
STEPS = {
    "ctc": (
        "stage2_ctc_real.yaml",
        16,
        (("sentences", "utterance", "asr"), ("qa_speech", "speech_dialogue", "chat")),
    ),
    "kd": (
        "stage2_real.yaml",
        8,
        (("sentences", "utterance", "asr"), ("qa_speech", "speech_dialogue", "chat")),
    ),
    "self": (
        "stage2_self_real.yaml",
        8,
        (("sentences_self", "speech_dialogue", "chat"), ("qa_speech_self", "speech_dialogue", "chat")),
    ),
}


def rows(data: str, n: int, sets) -> list[tuple[str, str, dict]]:
    """``n`` spoken rows: alternately one of the first dataset (a transcription sentence, or its self-answer
    consultation) and of the second (a spoken question)."""
    readers = [iter_rows(storage.join(data, name)) for name, _, _ in sets]
    return [(sets[i % 2][1], sets[i % 2][2], next(readers[i % 2])) for i in range(n)]


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--init-from", default=None, help="a stage-1 export (default: the pretrained parts)")
    ap.add_argument("--batches", type=int, default=4, help="timed batches per step kind and mode")
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS), help="step kinds to time")
    args = ap.parse_args()
    torch.manual_seed(0)

    results = []
    for kind in args.steps:
        config, batch_rows, sets = STEPS[kind]
        overrides = [f"model.init_from={args.init_from}"] if args.init_from else []
        cfg = load_config(TrainJobConfig, config, overrides)
        model, processor = build_model(cfg.model)
        model = model.to(torch.bfloat16).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        spec = cfg.model.model_dump(mode="json")
        encoder, frontend = build_encoder(cfg.model)  # the cache's own encoding, in this process
        key = encoder_fingerprint(encoder, frontend)
        data = rows(args.data, batch_rows * args.batches, sets)
        t0 = time.perf_counter()
        frames = []
        for k, task, row in data:
            waves = recordings(row, k, [task])
            frames.append(
                pack([(f, len(w) / SAMPLING_RATE) for f, w in zip(encode(encoder, frontend, waves), waves)])
            )
        cache_s = (time.perf_counter() - t0) / len(data)
        for mode in ("live", "cached"):
            featurizer = Featurizer(
                spec, cfg.data.max_audio_seconds, "/tmp/unused-quarantine", mode == "cached"
            )
            phases = {"featurize": 0.0, "encoder": 0.0, "forward+backward": 0.0, "optimizer": 0.0}
            for b in range(args.batches):
                chunk = range(b * batch_rows, (b + 1) * batch_rows)
                t = time.perf_counter()
                examples = [
                    featurizer.featurize_row(
                        data[i][0], data[i][1], data[i][2], frames[i] if mode == "cached" else None
                    )[0]
                    for i in chunk
                ]
                batch = processor.collate(examples)
                phases["featurize"] += time.perf_counter() - t
                if mode == "live":  # the encoder alone, as the step runs it (its output feeds the adapter)
                    with torch.no_grad():
                        feats = batch["input_features"].to(torch.bfloat16)
                        _, dt = timed(model.encoder_frames, feats, batch["audio_chunk_lengths"])
                    phases["encoder"] += dt
                    batch["input_features"] = feats
                opt.zero_grad()
                t = time.perf_counter()
                out = model(**batch)
                out.loss.backward()
                step_s = time.perf_counter() - t
                phases["forward+backward"] += step_s - (dt if mode == "live" else 0.0)
                _, dt_opt = timed(opt.step)
                phases["optimizer"] += dt_opt
            per_batch = {k: v / args.batches for k, v in phases.items()}
            total = sum(per_batch.values())
            results.append((kind, mode, batch_rows, per_batch, total, batch_rows / total))
            print(f"{kind} {mode}: {per_batch} -> {batch_rows / total:.2f} examples/s", flush=True)
        print(f"{kind}: computing the frames once costs {cache_s:.3f} s per example (key {key})", flush=True)

    print(
        "\n| step | input | rows | featurize s | encoder s | forward+backward s | optimizer s | examples/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind, mode, n, p, total, eps in results:
        print(
            f"| {kind} | {mode} | {n} | {p['featurize']:.2f} | {p['encoder']:.2f} "
            f"| {p['forward+backward']:.2f} | {p['optimizer']:.3f} | {eps:.2f} |"
        )
    eps = {(r[0], r[1]): r[5] for r in results}
    for kind in args.steps:
        print(f"{kind}: cached / live = {eps[kind, 'cached'] / eps[kind, 'live']:.2f}x")
    if {"kd", "self"} <= set(args.steps):  # the real recipe's answer step now vs the KD step it replaced
        print(f"self cached / KD live = {eps['self', 'cached'] / eps['kd', 'live']:.2f}x")


if __name__ == "__main__":
    main()
