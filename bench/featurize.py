"""Featurization throughput and padding fraction of the data plane.

    python bench/featurize.py                       # in-process, one core
    python bench/featurize.py --ray --actors 2      # also through build_dataset (Ray Data actor pool)

Generates synthetic shards (make_data's generators, local dir), then measures:
* throughput: audio seconds featurized per CPU-second per core (decode FLAC + resample with soxr +
  validation + messages + ``processor.featurize``), for speech rows;
* padding fraction of batches (share of padded token positions) for the mixed datasets, with and
  without length bucketing, by rows and by a token budget.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time

from medlm.data.factory import MakeDataConfig, make_shard, plan
from medlm.data.io import iter_rows
from medlm.data.pipeline import padding_fraction, plan_batches
from medlm.data.registry import DataSpec
from medlm.data.schema import spoken_seconds, to_messages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--utterances", type=int, default=64)
    ap.add_argument("--consultations", type=int, default=64)
    ap.add_argument("--batch-rows", type=int, default=8)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--ray", action="store_true", help="also time build_dataset on a local Ray")
    ap.add_argument("--actors", type=int, default=2)
    args = ap.parse_args()

    from medlm.models import ModelSpec, build_processor

    root = tempfile.mkdtemp(prefix="medlm-bench-")
    cfg = MakeDataConfig(
        output=root,
        consultations=args.consultations,
        speech_consultations=args.consultations // 2,
        utterances=args.utterances,
        ct_cases=2,
    )
    t = time.time()
    for name, idx, items in plan(cfg):
        make_shard(cfg, name, idx, items)
    print(f"generated shards in {time.time() - t:.1f}s under {root}")

    model_spec = ModelSpec(preset=args.preset)
    processor = build_processor(model_spec)
    spec = DataSpec(
        root=root,
        datasets=[{"name": n} for n in ("consult_text", "consult_speech", "qa_speech", "utterances_asr")],
    )
    rows = [(d.kind, d.task, r) for d in spec.resolved() for r in iter_rows(d.uri)]

    # throughput, one core, speech rows only (decode + resample + validate + featurize)
    speech = [x for x in rows if x[0] != "text_dialogue"]
    audio_s, lengths = 0.0, []
    cpu0, wall0 = time.process_time(), time.time()
    for kind, task, row in speech:
        messages, label = to_messages(row, kind, task, 60.0)
        audio_s += spoken_seconds(messages)
        processor.featurize(messages, class_label=label)
    cpu, wall = time.process_time() - cpu0, time.time() - wall0
    for kind, task, row in rows:
        messages, label = to_messages(row, kind, task, 60.0)
        lengths.append(int(processor.featurize(messages, class_label=label)["num_tokens"]))

    table = [
        (
            "featurize (in-process, 1 core)",
            f"{audio_s:.0f} s audio in {len(speech)} rows",
            f"{audio_s / cpu:.1f} audio-s per CPU-s",
            f"{audio_s / wall:.1f} audio-s per wall-s",
        )
    ]
    random.Random(0).shuffle(lengths)
    for label, bucketing, tokens in (
        ("rows, no bucketing", False, None),
        ("rows, bucketing", True, None),
        ("token budget, no bucketing", False, args.batch_tokens),
        ("token budget, bucketing", True, args.batch_tokens),
    ):
        batches = plan_batches(lengths, args.batch_rows, tokens, bucketing)
        table.append(
            (
                f"padding: {label}",
                f"{len(lengths)} rows, {len(batches)} batches",
                f"{100 * padding_fraction(lengths, batches):.1f}% padded",
                "",
            )
        )

    if args.ray:
        from medlm.data.pipeline import build_dataset
        from medlm.stack import init_ray

        init_ray(num_cpus=os.cpu_count())
        # leave room for the shard-reading tasks (read_cpus) next to the featurizer actors
        cpus = (os.cpu_count() - spec.read_cpus) / args.actors
        speech_spec = spec.model_copy(
            update={
                "datasets": spec.datasets[1:],
                "featurizers": args.actors,
                "featurizer_cpus": min(1.0, cpus),
            }
        )
        total_audio, t = 0.0, time.time()
        for batch in build_dataset(speech_spec, model_spec).iter_batches(
            batch_size=64, batch_format="pyarrow"
        ):
            total_audio += sum(batch.column("audio_seconds").to_pylist())
        wall = time.time() - t
        table.append(
            (
                f"featurize (Ray Data, {args.actors} actors)",
                f"{total_audio:.0f} s audio",
                f"{total_audio / (wall * args.actors):.1f} audio-s per wall-s per actor",
                f"{total_audio / wall:.1f} audio-s per wall-s (incl. startup)",
            )
        )

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"preset {args.preset}; batch_rows {args.batch_rows}, batch_tokens {args.batch_tokens}\n"
    )
    print("| measurement | data | result | |\n|---|---|---|---|")
    for r in table:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
