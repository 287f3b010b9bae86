"""The data plane: Parquet shard schemas, readers/writers, Ray Data streaming, synthetic factory.

Heavy pieces (Ray, the model processor) are imported lazily by the functions that need them.
"""

from medlm.data.io import ShardWriter, iter_rows, read_ray, read_table, shard_files, write_rows, write_shard
from medlm.data.quarantine import read_quarantine, summarize_quarantine, write_quarantine
from medlm.data.registry import REGISTRY, DatasetEntry, DataSpec, register_dataset
from medlm.data.schema import (
    CT,
    DIALOGUE,
    UTTERANCE,
    BadRecord,
    decode_audio,
    encode_flac,
    schema_for,
    to_messages,
)

__all__ = [
    "CT",
    "DIALOGUE",
    "REGISTRY",
    "UTTERANCE",
    "BadRecord",
    "DataSpec",
    "DatasetEntry",
    "ShardWriter",
    "decode_audio",
    "encode_flac",
    "iter_rows",
    "read_quarantine",
    "read_ray",
    "read_table",
    "register_dataset",
    "schema_for",
    "shard_files",
    "summarize_quarantine",
    "to_messages",
    "write_quarantine",
    "write_rows",
    "write_shard",
]
