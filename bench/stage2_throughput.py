"""Where a stage-2 step's time goes, live vs on cached frozen work (real preset, one process, this machine).

    python bench/stage2_throughput.py --data <make_data output> [--init-from <stage-1 export>] [--batches 4]

The same spoken examples (``sentences_asr`` + ``qa_speech`` rows of a ``make_data`` output) go through the
two stage-2 steps of the real recipe, the model in bf16 as DeepSpeed trains it, adapter only:

* **CTC step** (``configs/stage2_ctc_real.yaml``: 16 rows, ``ctc_weight`` 1, no LLM forward)
* **KD step** (``configs/stage2_real.yaml``: 8 rows, KD from the text-fed LLM + LM 0.2 + CTC 0.5)

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

STEPS = {"ctc": ("stage2_ctc_real.yaml", 16), "kd": ("stage2_real.yaml", 8)}


def rows(data: str, n: int) -> list[tuple[str, str, dict]]:
    """``n`` spoken rows: alternately a transcription sentence and a spoken question."""
    sentences = iter_rows(storage.join(data, "sentences"))
    questions = iter_rows(storage.join(data, "qa_speech"))
    out = []
    for i in range(n):
        out.append(
            ("utterance", "asr", next(sentences))
            if i % 2 == 0
            else ("speech_dialogue", "chat", next(questions))
        )
    return out


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--init-from", default=None, help="a stage-1 export (default: the pretrained parts)")
    ap.add_argument("--batches", type=int, default=4, help="timed batches per step kind and mode")
    args = ap.parse_args()
    torch.manual_seed(0)

    results = []
    for kind, (config, batch_rows) in STEPS.items():
        overrides = [f"model.init_from={args.init_from}"] if args.init_from else []
        cfg = load_config(TrainJobConfig, config, overrides)
        model, processor = build_model(cfg.model)
        model = model.to(torch.bfloat16).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        spec = cfg.model.model_dump(mode="json")
        encoder, frontend = build_encoder(cfg.model)  # the cache's own encoding, in this process
        key = encoder_fingerprint(encoder, frontend)
        data = rows(args.data, batch_rows * args.batches)
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
    for kind in STEPS:
        live, cached = (r[5] for r in results if r[0] == kind)
        print(f"{kind}: cached / live = {cached / live:.2f}x")


if __name__ == "__main__":
    main()
