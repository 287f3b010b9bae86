"""Frozen work done once: the audio encoder's frames of each recording, stored once beside the shards.

When a run's encoder is frozen its output for a recording never changes, yet a live step decodes the audio,
computes log-mel features and runs a 10 s Whisper window for every row, on every epoch. :func:`prepare`
(called by the training driver when ``data.encoder_cache`` is on) runs one Ray Data step over the shards whose
frames are missing or stale -- actors that each hold the encoder, batched -- and writes, for each shard::

    <dataset>/<file>.parquet                    the shard (its rows)
    <dataset>/_encoder/<key>/<file>.parquet     one row per shard row, same order: id, frames (npz, float16)

``key`` is :func:`medlm.models.encoder.encoder_fingerprint` of the encoder's weights and front end: a
different or fine-tuned encoder has another key and never reads these frames, and a run whose encoder is
not the one the frames were computed with is refused (:func:`check_key`). A cache file records the size,
modification time and Parquet footer of the shard it was computed from; a rewritten shard is computed
again. The frames are each chunk's valid encoder frames, what :meth:`SpeechLM.encoder_frames` gives the
adapter on a live step (the equivalence is a test). A row whose audio cannot be used gets no frames
(null); the featurizer then reads it live and quarantines it as it always does.

The pipeline (:mod:`medlm.data.pipeline`) reads a shard and its frames side by side (:func:`read_frames`).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medlm import storage
from medlm.audio import SAMPLING_RATE
from medlm.data.io import shard_files
from medlm.data.registry import DataSpec
from medlm.data.schema import BadRecord, to_messages

CACHE_DIR = "_encoder"
FRAMES = pa.schema([("id", pa.string()), ("frames", pa.binary())])
_SOURCE = b"medlm.source"  # parquet metadata: the shard's size and mtime when its frames were computed


def cache_uri(shard: str, key: str) -> str:
    """Where the frames of ``shard`` (a ``.parquet`` file of a dataset) computed by encoder ``key`` live."""
    parent, name = shard.rsplit("/", 1)
    return f"{parent}/{CACHE_DIR}/{key}/{name}"


def _source(shard: str) -> str:
    """What identifies a shard's contents cheaply: its size, modification time and Parquet footer (row groups,
    column sizes and statistics), read without its data."""
    import hashlib

    fs, path = storage.resolve(shard)
    info = fs.get_file_info(path)
    with fs.open_input_file(path) as f:
        footer = json.dumps(pq.ParquetFile(f).metadata.to_dict(), sort_keys=True, default=str)
    digest = hashlib.sha256(footer.encode()).hexdigest()[:16]
    return json.dumps({"size": info.size, "mtime_ns": info.mtime_ns, "footer": digest})


def is_fresh(shard: str, key: str) -> bool:
    """The frames of ``shard`` for ``key`` exist and were computed from the shard as it is now."""
    uri = cache_uri(shard, key)
    if not storage.exists(uri):
        return False
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        meta = pq.ParquetFile(f).schema_arrow.metadata or {}
    return meta.get(_SOURCE) == _source(shard).encode()


def pack(recordings: list[tuple[list[np.ndarray], float]]) -> bytes:
    """One row's recordings (per-chunk frames, seconds) -> npz bytes (float16 frames)."""
    arrays = {"seconds": np.asarray([s for _, s in recordings], np.float32)}
    for i, (chunks, _) in enumerate(recordings):
        for j, f in enumerate(chunks):
            arrays[f"r{i}c{j}"] = np.asarray(f, np.float16)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack(data: bytes) -> list[dict[str, Any]]:
    """npz bytes -> ``[{"frames": [per-chunk arrays], "seconds": s}, ...]`` in reading order."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        seconds = z["seconds"].tolist()
        names = sorted((tuple(map(int, re.findall(r"\d+", k))), k) for k in z.files if k != "seconds")
        out = [{"frames": [], "seconds": float(s)} for s in seconds]
        for (i, _), k in names:
            out[i]["frames"].append(z[k])
    return out


def recordings(row: dict, kind: str, task: str, max_audio_seconds: float) -> list[np.ndarray] | None:
    """A shard row's recordings (16 kHz) in reading order, or None for a row the featurizer will reject."""
    try:
        messages, _ = to_messages(row, kind, task, max_audio_seconds)
    except BadRecord:
        return None
    parts = (p for m in messages if isinstance(m["content"], list) for p in m["content"])
    return [p["audio"] for p in parts if p["type"] == "audio"]


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

    def __init__(self, model_spec: dict, key: str, max_audio_seconds: float):
        from medlm.models import ModelSpec
        from medlm.models.build import build_encoder
        from medlm.models.encoder import encoder_fingerprint

        self.encoder, self.frontend = build_encoder(ModelSpec(**model_spec))
        found = encoder_fingerprint(self.encoder, self.frontend)
        if found != key:  # e.g. a randomly initialised preset encoder: no build reproduces it
            raise ValueError(f"the encoder built for the cache has key {found}, the run's has {key}")
        self.key, self.max_audio_seconds = key, max_audio_seconds

    def write(self, shard: str, kind: str, task: str) -> int:
        from medlm.data.pipeline import envelope_row, iter_envelopes

        ids, blobs = [], []
        for table in iter_envelopes(shard, "", kind, task, rows=32):
            envs = table.to_pylist()
            rows = [recordings(envelope_row(e), kind, task, self.max_audio_seconds) for e in envs]
            waves = [w for r in rows if r for w in r]
            encoded = iter(encode(self.encoder, self.frontend, waves)) if waves else iter(())
            for e, r in zip(envs, rows):
                ids.append(e["id"])
                if r is None:
                    blobs.append(None)
                    continue
                blobs.append(pack([(next(encoded), len(w) / SAMPLING_RATE) for w in r]))
        table = pa.table({"id": ids, "frames": blobs}, schema=FRAMES.with_metadata({_SOURCE: _source(shard)}))
        fs, path = storage.resolve(cache_uri(shard, self.key))
        if not storage.is_s3(shard):
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, path, filesystem=fs)
        return len(ids)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [
            self.write(str(s), str(k), str(t))
            for s, k, t in zip(batch["shard"], batch["kind"], batch["task"])
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
    ``encoder_key`` set, so the pipeline reads them. A spec that already names another key is refused."""
    import ray.data

    from medlm.models.build import build_encoder
    from medlm.models.encoder import encoder_fingerprint

    encoder, frontend = build_encoder(model_spec)
    check_frozen(model_spec, encoder)
    key = encoder_fingerprint(encoder, frontend)
    check_key(spec.encoder_key, key)
    tasks = [
        {"shard": shard, "kind": d.kind, "task": d.task}
        for d in spec.resolved()
        for shard in shard_files(d.uri)
        if not is_fresh(shard, key)
    ]
    if tasks:
        ds = ray.data.from_items(tasks).map_batches(
            FrameWriter,
            fn_constructor_args=(model_spec.model_dump(mode="json"), key, spec.max_audio_seconds),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(actors, len(tasks))),
            num_cpus=cpus,
        )
        ds.context.enable_progress_bars = False
        ds.take_all()
    return spec.model_copy(update={"encoder_key": key})


def check_key(expected: str | None, found: str) -> None:
    """Refuse frames computed by another encoder: ``expected`` is the key the data names (None: any),
    ``found`` the key of the run's encoder."""
    if expected is not None and expected != found:
        raise ValueError(
            f"the cached encoder frames were computed by encoder {expected}, but this run's encoder is "
            f"{found}: a different or fine-tuned encoder cannot read them "
            "(drop data.encoder_key to compute its own)"
        )


def read_frames(shard: str, key: str, rows: int = 64) -> Iterator[tuple[str, bytes | None]]:
    """``(id, frames)`` of each row of ``shard``'s cache file, in the shard's order; a missing or stale file
    is an error that says where frames come from."""
    uri = cache_uri(shard, key)
    if not is_fresh(shard, key):
        raise FileNotFoundError(
            f"no current encoder frames for {shard} under {uri}: they are computed by the training driver "
            "(data.encoder_cache) before the workers start"
        )
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        for rb in pq.ParquetFile(f).iter_batches(batch_size=rows):
            yield from zip(rb.column("id").to_pylist(), rb.column("frames").to_pylist())
