"""Cached encoder frames on disk: where they live, how a row's frames are packed, and reading them back.

For each shard of a dataset, the frames its encoder ``key`` computed (:mod:`medlm.data.encoder_cache` writes
them) sit beside it::

    <dataset>/<file>.parquet                    the shard (its rows)
    <dataset>/_encoder/<key>/<file>.parquet     one row per shard row, same order: id, frames (npz, float16)

A cache file records the size, modification time and Parquet footer of the shard it was computed from
(:func:`is_fresh`); the pipeline reads a shard and its frames side by side (:func:`read_frames`).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medlm import storage

CACHE_DIR = "_encoder"
FRAMES = pa.schema([("id", pa.string()), ("frames", pa.binary())])
SOURCE = b"medlm.source"  # parquet metadata: the shard's size and mtime when its frames were computed


def cache_uri(shard: str, key: str) -> str:
    """Where the frames of ``shard`` (a ``.parquet`` file of a dataset) computed by encoder ``key`` live."""
    parent, name = shard.rsplit("/", 1)
    return f"{parent}/{CACHE_DIR}/{key}/{name}"


def source(shard: str) -> str:
    """What identifies a shard's contents cheaply: its size, modification time and Parquet footer (row groups,
    column sizes and statistics), read without its data."""
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
    try:
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).schema_arrow.metadata or {}
    except (OSError, pa.ArrowInvalid):  # a partly written file (a killed writer): computed again
        return False
    return meta.get(SOURCE) == source(shard).encode()


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
