"""Frozen work done once: the audio encoder's frames of each recording, stored once beside the shards.

When a run's encoder is frozen its output for a recording never changes, yet a live step decodes the audio,
computes log-mel features and runs a 10 s Whisper window for every row, on every epoch. :func:`prepare`
(called by the training driver when ``data.encoder_cache`` is on) runs one Ray Data step over the shards whose
frames are missing or stale -- actors that each hold the encoder, batched -- and writes each shard's frames
where :mod:`medlm.data.frames` says they live.

``key`` is :func:`medlm.models.encoder.encoder_fingerprint` of the encoder's weights and front end: a
different or fine-tuned encoder has another key and never reads these frames, and a run whose encoder is
not the one the frames were computed with is refused (:func:`medlm.data.frames.check_key`). A rewritten
shard is computed again. The frames are each chunk's valid encoder frames, what
:meth:`SpeechLM.encoder_frames` gives the adapter on a live step (the equivalence is a test). A row whose
audio cannot be used gets no frames (null); the featurizer then reads it live and quarantines it as it
always does.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medlm import storage
from medlm.audio import SAMPLING_RATE
from medlm.data.frames import FRAMES, SOURCE, cache_uri, check_key, is_fresh, pack, source
from medlm.data.io import shard_files
from medlm.data.pipeline import envelope_row, iter_envelopes
from medlm.data.registry import DataSpec
from medlm.data.schema import BadRecord, to_messages

log = logging.getLogger(__name__)


def recordings(row: dict, kind: str, tasks: list[str]) -> list[np.ndarray] | None:
    """A shard row's recordings (16 kHz) in reading order, as the one of ``tasks`` that reads the most audio
    sees them (a CT shard is read by ``report``, no audio, and ``spoken_report``), or None for a row the
    featurizer will reject. Every length: the reader checks the run's ``max_audio_seconds``."""
    from medlm.models.baselines import audio_parts

    found = None
    for task in tasks:
        try:
            messages, _ = to_messages(row, kind, task)
        except BadRecord:
            continue
        audio = [p["audio"] for p in audio_parts(messages)]
        found = audio if found is None or len(audio) > len(found) else found
    return found


def encode(encoder, frontend, waves: list[np.ndarray], chunk_batch: int = 16) -> list[list[np.ndarray]]:
    """Recordings -> each one's per-chunk valid encoder frames (float32), ``chunk_batch`` chunks at a time."""
    import torch

    feats, per_item, lengths = frontend.features(waves, return_lengths=True)
    frames = []
    with torch.inference_mode():
        for i in range(0, len(feats), chunk_batch):
            out = encoder(torch.from_numpy(feats[i : i + chunk_batch]))
            for c, n in enumerate(lengths[i : i + chunk_batch]):
                frames.append(out[c, : frontend.encoder_frames(n)].float().numpy())
    grouped, start = [], 0
    for count in per_item:
        grouped.append(frames[start : start + count])
        start += count
    return grouped


class FrameWriter:
    """Ray Data actor: shard tasks -> each shard's frames file. Holds the encoder (float32, eval)."""

    def __init__(self, model_spec: dict, key: str):
        from medlm.models import ModelSpec
        from medlm.models.build import build_encoder
        from medlm.models.encoder import encoder_fingerprint

        self.encoder, self.frontend = build_encoder(ModelSpec(**model_spec))
        found = encoder_fingerprint(self.encoder, self.frontend, model_spec["dtype"])
        if found != key:  # e.g. a randomly initialised preset encoder: no build reproduces it
            raise ValueError(f"the encoder built for the cache has key {found}, the run's has {key}")
        self.key = key

    def write(self, shard: str, kind: str, tasks: list[str]) -> int:
        ids, blobs = [], []
        read_from = source(shard)  # before reading: a shard rewritten meanwhile is computed again next time
        for table in iter_envelopes(shard, "", kind, tasks[0], rows=32):
            envs = table.to_pylist()
            rows = [recordings(envelope_row(e), kind, tasks) for e in envs]
            waves = [w for r in rows if r for w in r]
            encoded = iter(encode(self.encoder, self.frontend, waves)) if waves else iter(())
            for e, r in zip(envs, rows):
                ids.append(e["id"])
                if r is None:
                    blobs.append(None)
                    continue
                blobs.append(pack([(next(encoded), len(w) / SAMPLING_RATE) for w in r]))
        table = pa.table({"id": ids, "frames": blobs}, schema=FRAMES.with_metadata({SOURCE: read_from}))
        fs, path = storage.resolve(cache_uri(shard, self.key))
        if not storage.is_s3(shard):
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, path, filesystem=fs)
        return len(ids)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [
            self.write(str(s), str(k), str(t).split(","))
            for s, k, t in zip(batch["shard"], batch["kind"], batch["tasks"])
        ]
        return {"shard": batch["shard"], "rows": np.asarray(rows, np.int64)}


def check_frozen(model_spec, encoder) -> None:
    """Refuse a run that trains its encoder: its frames change every step, so cached ones would be stale."""
    if model_spec.encoder_lora_r:
        raise ValueError("data.encoder_cache needs a frozen encoder, but model.encoder_lora_r > 0 trains it")
    names = [f"encoder.{n}" for n, _ in encoder.named_parameters()]
    trained = [n for n in names if any(re.search(p, n) for p in model_spec.trainable)]
    if trained:
        raise ValueError(
            f"data.encoder_cache needs a frozen encoder, but model.trainable matches {trained[0]!r} "
            f"(and {len(trained) - 1} more encoder parameters)"
        )


def prepare(spec: DataSpec, model_spec, actors: int = 1, cpus: float = 1.0) -> DataSpec:
    """Compute the frames of every shard of ``spec`` that has none (or stale ones) for the encoder of
    ``model_spec`` (a ``ModelSpec``), one Ray Data step with ``actors`` encoder actors; returns ``spec`` with
    ``encoder_key`` set, so the pipeline reads them. A spec that already names another key is refused. A
    randomly initialised encoder (a preset with no checkpoint) cannot be cached: ``spec`` comes back as is."""
    import ray.data

    from medlm.models.build import build_encoder, resolve_spec
    from medlm.models.encoder import encoder_fingerprint

    if not model_spec.init_from and resolve_spec(model_spec).encoder_path is None:
        log.warning(
            "data.encoder_cache: the encoder is randomly initialised (no encoder_path, no init_from), "
            "so no other build reproduces its frames; its audio is read live"
        )
        return spec
    encoder, frontend = build_encoder(model_spec)
    check_frozen(model_spec, encoder)
    key = encoder_fingerprint(encoder, frontend, model_spec.dtype)
    check_key(spec.encoder_key, key)
    by_shard: dict[str, dict] = {}  # one task per shard, with every task that reads it
    for d in spec.resolved():
        for shard in shard_files(d.uri):
            item = by_shard.setdefault(shard, {"shard": shard, "kind": d.kind, "tasks": []})
            item["tasks"].append(d.task)
    tasks = [{**t, "tasks": ",".join(t["tasks"])} for t in by_shard.values() if not is_fresh(t["shard"], key)]
    if tasks:
        ds = ray.data.from_items(tasks).map_batches(
            FrameWriter,
            fn_constructor_args=(model_spec.model_dump(mode="json"), key),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(actors, len(tasks))),
            num_cpus=cpus,
        )
        ds.context.enable_progress_bars = False
        ds.take_all()
    return spec.model_copy(update={"encoder_key": key})
