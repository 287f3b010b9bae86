"""Read and write Parquet shards on ``s3://`` or local paths (through :mod:`medlm.storage`).

A dataset is a directory (prefix) of ``part-NNNNN.parquet`` files with one of the schemas in
:mod:`medlm.data.schema`. Writers cut shards by row count and by encoded size (default 64 MB) so
a dataset is a few large objects rather than thousands of tiny ones; each shard holds several
row groups so readers can stream it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medlm import storage
from medlm.data.schema import schema_for

TARGET_SHARD_BYTES = 64 * 1024 * 1024
ROW_GROUP_ROWS = 256


def shard_uri(uri: str, index: int) -> str:
    return storage.join(uri, f"part-{index:05d}.parquet")


def write_shard(rows: list[dict], uri: str, kind: str) -> str:
    """Write ``rows`` (dicts in ``kind``'s schema) as one Parquet file at ``uri`` (a file URI)."""
    schema = schema_for(kind)
    try:
        table = pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as e:
        raise ValueError(f"rows do not fit the {kind!r} schema: {e}") from e
    fs, path = storage.resolve(uri)
    if storage.is_s3(uri):
        storage.makedirs(uri)
    else:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs, row_group_size=ROW_GROUP_ROWS, compression="zstd")
    return uri


class ShardWriter:
    """Append rows; a new ``part-NNNNN.parquet`` starts every ``rows_per_shard`` rows or ``target_bytes``.

    ``first_index`` lets parallel writers (one per Ray task) share a dataset prefix without clashes.
    """

    def __init__(
        self,
        uri: str,
        kind: str,
        rows_per_shard: int = 10_000,
        target_bytes: int = TARGET_SHARD_BYTES,
        first_index: int = 0,
    ):
        schema_for(kind)  # validates the kind
        self.uri, self.kind = uri, kind
        self.rows_per_shard, self.target_bytes = rows_per_shard, target_bytes
        self.index = first_index
        self.files: list[str] = []
        self._rows: list[dict] = []
        self._bytes = 0

    def write(self, row: dict) -> None:
        self._rows.append(row)
        self._bytes += _nbytes(row)
        if len(self._rows) >= self.rows_per_shard or self._bytes >= self.target_bytes:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            self.files.append(write_shard(self._rows, shard_uri(self.uri, self.index), self.kind))
            self.index += 1
            self._rows, self._bytes = [], 0

    def close(self) -> list[str]:
        self.flush()
        return self.files

    def __enter__(self) -> ShardWriter:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


def _nbytes(value: Any) -> int:
    """Rough encoded size of a row (bytes and strings, nested)."""
    if isinstance(value, (bytes, str)):
        return len(value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 8


def write_rows(rows: Iterable[dict], uri: str, kind: str, **kwargs: Any) -> list[str]:
    """Write all ``rows`` under the dataset prefix ``uri``; returns the shard URIs."""
    with ShardWriter(uri, kind, **kwargs) as w:
        for row in rows:
            w.write(row)
    return w.files


def shard_files(uri: str) -> list[str]:
    """The Parquet shards of a dataset (a prefix, or a single file). Files under a folder whose name starts
    with ``_`` or ``.`` are not shards (e.g. ``_encoder/``, the encoder frames cached beside them)."""
    if uri.endswith(".parquet"):
        return [uri]
    base = storage.resolve(uri)[1].rstrip("/")  # list_files returns resolved paths (or s3://bucket/key)
    prefix = len(base) + (len("s3://") if storage.is_s3(uri) else 0)
    files = [
        f
        for f in storage.list_files(uri, suffix=".parquet")
        if not any(part.startswith(("_", ".")) for part in f[prefix:].split("/")[:-1])
    ]
    if not files:
        raise FileNotFoundError(f"no .parquet shards under {uri}")
    return files


def read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    """A whole dataset as one Arrow table (small datasets, tests and tools only)."""
    tables = []
    for f in shard_files(uri):
        fs, path = storage.resolve(f)
        tables.append(pq.read_table(path, filesystem=fs, columns=columns))
    return pa.concat_tables(tables)


def iter_rows(uri: str, batch_rows: int = ROW_GROUP_ROWS) -> Iterator[dict]:
    """Stream a dataset's rows as dicts, one row group at a time."""
    for f in shard_files(uri):
        fs, path = storage.resolve(f)
        with fs.open_input_file(path) as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=batch_rows):
                yield from batch.to_pylist()


def read_ray(uri: str, **kwargs: Any):
    """A dataset as a ``ray.data.Dataset`` (lazy, streamed shard by shard)."""
    import ray.data

    files = shard_files(uri)
    fs, _ = storage.resolve(files[0])
    paths = [storage.resolve(f)[1] for f in files]
    return ray.data.read_parquet(paths, filesystem=fs, **kwargs)
