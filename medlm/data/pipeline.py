"""Streaming shards into training with Ray Data.

``build_dataset(data_spec, model_spec)`` returns a lazy ``ray.data.Dataset`` of featurized rows::

    read_parquet (shards in a seeded order)  -> envelope {dataset, kind, task, id, row}   per dataset
    -> mix(weights)                           seeded, reproducible interleaving (preserve_order)
    -> Featurizer actors (CPU)                decode + resample + validate + messages + processor.featurize
                                              bad rows -> quarantine report, good rows -> one output row each

Each output row is ``{dataset, id, num_tokens, audio_seconds, example}`` where ``example`` holds the
processor's numpy dict (``np.savez`` bytes). On a Train worker::

    for batch in iter_train_batches(ray.train.get_dataset_shard("train"), processor, data_spec, epoch=e):
        loss = engine(**batch).loss

``iter_train_batches`` buffers ``bucket_buffer`` examples, sorts them by length (bucketing), cuts
batches by rows or by a token budget, shuffles the batch order with the seed and pads them with
``processor.collate``. Nothing materializes the whole dataset.
"""

from __future__ import annotations

import io
import pickle
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medlm import storage
from medlm.data.frames import read_frames, unpack
from medlm.data.io import shard_files
from medlm.data.quarantine import bad_record, write_quarantine
from medlm.data.registry import DataSpec, ResolvedDataset
from medlm.data.schema import BadRecord, spoken_seconds, to_messages

ENVELOPE = pa.schema(
    [
        ("dataset", pa.string()),
        ("kind", pa.string()),
        ("task", pa.string()),
        ("id", pa.string()),
        ("row", pa.binary()),
        ("frames", pa.binary()),  # the row's cached encoder frames (medlm.data.encoder_cache), or null
    ]
)
FEATURIZED = pa.schema(
    [
        ("dataset", pa.string()),
        ("id", pa.string()),
        ("num_tokens", pa.int64()),
        ("audio_seconds", pa.float32()),
        ("example", pa.binary()),
    ]
)


def encode_example(example: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in example.items()})
    return buf.getvalue()


def decode_example(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# --- the envelope: the one reader of shard rows into a stream of mixed kinds (training and evaluation) ------


def envelope(
    rows: list[dict],
    name: str,
    kind: str,
    task: str,
    ids: list[str] | None = None,
    frames: list[bytes | None] | None = None,
) -> pa.Table:
    """Rows of any schema -> the common envelope ``{dataset, kind, task, id, row, frames}`` (each row pickled,
    so datasets of all kinds share one stream); ``ids`` default to the rows' ``id``; ``frames`` (the rows'
    cached encoder frames) to null."""
    n = len(rows)
    return pa.table(
        {
            "dataset": [name] * n,
            "kind": [kind] * n,
            "task": [task] * n,
            "id": ids if ids is not None else [str(r.get("id") or "") for r in rows],
            "row": [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in rows],
            "frames": frames if frames is not None else [None] * n,
        },
        schema=ENVELOPE,
    )


def envelope_row(env: dict) -> dict:
    """The shard row an envelope row (a dict of :data:`ENVELOPE`'s columns) carries."""
    return pickle.loads(env["row"])


def iter_envelopes(
    uri: str,
    name: str,
    kind: str,
    task: str,
    rows: int = 64,
    limit: int | None = None,
    encoder_key: str | None = None,
) -> Iterator[pa.Table]:
    """One shard file -> envelope tables of up to ``rows`` rows, streamed one slice of a row group at a time;
    with ``limit``, its first ``limit`` rows only; with ``encoder_key``, each row with its cached encoder
    frames (:func:`medlm.data.frames.read_frames`, read side by side)."""
    fs, path = storage.resolve(uri)
    left = limit
    cached = read_frames(uri, encoder_key, rows) if encoder_key else None
    with fs.open_input_file(path) as f:
        for rb in pq.ParquetFile(f).iter_batches(batch_size=rows):
            batch = rb.to_pylist()
            if left is not None:
                batch = batch[:left]
                left -= len(batch)
            frames = None
            if cached is not None:
                pairs = [next(cached, (None, None)) for _ in batch]
                if [i for i, _ in pairs] != [str(r.get("id") or "") for r in batch]:
                    raise ValueError(
                        f"the encoder frames of {uri} do not follow its rows: compute them again"
                    )
                frames = [b for _, b in pairs]
            yield envelope(batch, name, kind, task, frames=frames)
            if left is not None and left <= 0:
                break


class Featurizer:
    """Ray Data actor: envelope rows -> featurized rows; bad rows go to the quarantine report."""

    def __init__(self, model_spec: dict, max_audio_seconds: float, quarantine_uri: str, cached: bool = False):
        from medlm.models import ModelSpec, build_processor

        self.processor = build_processor(ModelSpec(**model_spec))
        self.max_audio_seconds = max_audio_seconds
        self.quarantine_uri = quarantine_uri
        self.cached = cached  # the rows carry cached encoder frames: no audio is decoded

    def featurize_row(
        self, kind: str, task: str, row: dict, frames: bytes | None = None
    ) -> tuple[dict, float]:
        """One shard row -> (the processor's example, seconds of audio). With ``cached``, the audio parts are
        the row's ``frames``; a row without frames (its audio was unusable) is read live, so it is rejected as
        it would be without the cache."""
        try:
            recordings = unpack(frames) if frames is not None else None
        except (OSError, ValueError, KeyError) as e:  # a corrupt cache entry: the row, not the run
            raise BadRecord("encoder_cache", f"unreadable cached frames: {e}"[:200]) from None
        messages, label = to_messages(row, kind, task, self.max_audio_seconds, recordings)
        seconds = spoken_seconds(messages)
        try:
            return self.processor.featurize(messages, class_label=label, cached_audio=self.cached), seconds
        except ValueError as e:  # the processor rejects the conversation (e.g. an unusable audio part)
            raise BadRecord("featurize_error", str(e)[:200]) from None

    def __call__(self, table: pa.Table) -> pa.Table:
        out: dict[str, list] = {k: [] for k in FEATURIZED.names}
        bad = []
        for env in table.to_pylist():
            try:
                example, seconds = self.featurize_row(
                    env["kind"], env["task"], envelope_row(env), env["frames"]
                )
            except BadRecord as e:
                bad.append(bad_record(env["dataset"], env["id"], e.reason, e.detail))
                continue
            out["dataset"].append(env["dataset"])
            out["id"].append(env["id"])
            out["num_tokens"].append(int(example["num_tokens"]))
            out["audio_seconds"].append(seconds)
            out["example"].append(encode_example(example))
        write_quarantine(self.quarantine_uri, bad)
        return pa.table(out, schema=FEATURIZED)


def _read_envelopes(
    batch: dict[str, np.ndarray],
    name: str,
    kind: str,
    task: str,
    rows: int = 64,
    encoder_key: str | None = None,
) -> Iterator[pa.Table]:
    """Shard URIs -> envelope tables, streamed one slice of a row group at a time."""
    for uri in batch["uri"]:
        yield from iter_envelopes(str(uri), name, kind, task, rows, encoder_key=encoder_key)


def read_envelopes(d: ResolvedDataset, seed: int, num_cpus: float = 0.25, encoder_key: str | None = None):
    """One dataset as envelope rows, its shards in a seeded order (one light read task per shard), with their
    cached encoder frames when ``encoder_key`` is given."""
    import ray.data

    files = shard_files(d.uri)
    random.Random(f"{seed}/{d.name}").shuffle(files)
    return ray.data.from_items([{"uri": f} for f in files]).map_batches(
        _read_envelopes,
        fn_kwargs={"name": d.name, "kind": d.kind, "task": d.task, "encoder_key": encoder_key},
        batch_size=1,
        batch_format="numpy",
        num_cpus=num_cpus,
    )


def mixed_envelopes(spec: DataSpec):
    """All datasets of ``spec`` interleaved by weight (reproducible: order is preserved)."""
    from ray.data import MixStoppingCondition

    resolved = spec.resolved()
    parts = [read_envelopes(d, spec.seed, spec.read_cpus, spec.encoder_key) for d in resolved]
    ds = (
        parts[0]
        if len(parts) == 1
        else parts[0].mix(
            *parts[1:],
            weights=[d.weight for d in resolved],
            stopping_condition=MixStoppingCondition.STOP_ON_LONGEST_DROP,
        )
    )
    ds.context.execution_options.preserve_order = True
    return ds


def build_dataset(data_spec: DataSpec, model_spec: Any):
    """Featurized, mixed rows of every dataset in ``data_spec`` for ``model_spec`` (a ``ModelSpec``)."""
    import ray.data

    spec_dict = model_spec.model_dump(mode="json") if hasattr(model_spec, "model_dump") else dict(model_spec)
    ds = mixed_envelopes(data_spec).map_batches(
        Featurizer,
        fn_constructor_args=(
            spec_dict,
            data_spec.max_audio_seconds,
            data_spec.quarantine(),
            data_spec.encoder_key is not None,
        ),
        batch_format="pyarrow",
        batch_size=data_spec.featurize_batch,
        compute=ray.data.ActorPoolStrategy(size=data_spec.featurizers),
        num_cpus=data_spec.featurizer_cpus,
    )
    ds.context.execution_options.preserve_order = True
    return ds


# --- batching on the train worker -------------------------------------------------------------


def plan_batches(
    lengths: list[int],
    batch_rows: int,
    batch_tokens: int | None = None,
    bucketing: bool = True,
    rng: random.Random | None = None,
) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches.

    With ``bucketing`` the indices are sorted by length first (so batches hold similar lengths);
    a batch closes at ``batch_rows`` rows or when padding it to its longest row would exceed
    ``batch_tokens``. The batch order is shuffled with ``rng`` (when given).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i]) if bucketing else list(range(len(lengths)))
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order:
        fits = len(cur) < batch_rows and (
            batch_tokens is None or max(longest, lengths[i]) * (len(cur) + 1) <= batch_tokens
        )
        if cur and not fits:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, lengths[i])
    if cur:
        batches.append(cur)
    if rng is not None:
        rng.shuffle(batches)
    return batches


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of padded positions when each batch is padded to its longest row."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1.0 - sum(lengths) / padded if padded else 0.0


def iter_examples(shard, rows: int = 64) -> Iterator[dict]:
    """Featurized rows of a dataset / ``DataIterator`` with the example decoded (plus dataset, id)."""
    for batch in shard.iter_batches(batch_size=rows, batch_format="pyarrow"):
        for r in batch.to_pylist():
            yield {
                "dataset": r["dataset"],
                "id": r["id"],
                "num_tokens": r["num_tokens"],
                **decode_example(r["example"]),
            }


def iter_train_batches(
    shard, processor, spec: DataSpec | None = None, epoch: int = 0, with_ids: bool = False
) -> Iterator[dict]:
    """Padded torch batches from a dataset or a Train worker's ``get_dataset_shard(...)``.

    Rows mode (``batch_tokens`` None) gives every rank the same batch count under an equal split;
    a token budget bounds memory but batch counts can then differ between ranks.
    """
    spec = spec or DataSpec()
    rng = random.Random(f"{spec.seed}/{epoch}")
    buf: list[dict] = []

    def emit(examples: list[dict]) -> Iterator[dict]:
        if not spec.bucketing:
            rng.shuffle(examples)
        lengths = [int(e["num_tokens"]) for e in examples]
        for b in plan_batches(lengths, spec.batch_rows, spec.batch_tokens, spec.bucketing, rng):
            chosen = [examples[i] for i in b]
            batch = processor.collate(
                [{k: v for k, v in e.items() if k not in ("dataset", "id")} for e in chosen]
            )
            if with_ids:
                batch["ids"] = [e["id"] for e in chosen]
                batch["datasets"] = [e["dataset"] for e in chosen]
            yield batch

    for example in iter_examples(shard):
        buf.append(example)
        if len(buf) >= spec.bucket_buffer:
            yield from emit(buf)
            buf = []
    if buf:
        yield from emit(buf)
