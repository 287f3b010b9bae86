"""Dataset registry (name -> path, kind, task) and ``DataSpec``, the ``data:`` section of job configs.

Registered paths are relative to ``DataSpec.root`` (where ``make_data`` writes); an entry's ``uri``
overrides the path with any ``s3://`` or local location, so external shards plug in the same way::

    data:
      root: s3://medlm/data
      datasets:
        - {name: consult_text, weight: 2}
        - {name: utterances_asr, weight: 1}
        - {name: my_corpus, uri: s3://bucket/corpus, kind: speech_dialogue, weight: 1}
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field, model_validator

from medlm import storage
from medlm.config import Section
from medlm.data.schema import KINDS, TASKS
from medlm.data.targets import SELF_ANSWER_SETS


@dataclass(frozen=True)
class RegisteredDataset:
    path: str  # relative to DataSpec.root, or an absolute URI
    kind: str
    task: str


@dataclass(frozen=True)
class FactoryDataset:
    """A dataset the synthetic factory (:mod:`medlm.data.factory`) writes: its directory under the data
    root, its kind, and the registered names that read it (name -> task)."""

    path: str
    kind: str
    names: tuple[tuple[str, str], ...]


# The one table of the factory's datasets, in the order it writes them; the factory's DATASETS / KIND_OF and
# the built-in REGISTRY entries derive from it.
FACTORY_DATASETS: tuple[FactoryDataset, ...] = (
    FactoryDataset("consult_text", "text_dialogue", (("consult_text", "chat"),)),
    FactoryDataset("qa_text", "text_dialogue", (("qa_text", "chat"),)),
    FactoryDataset("consult_speech", "speech_dialogue", (("consult_speech", "chat"),)),
    FactoryDataset("qa_speech", "speech_dialogue", (("qa_speech", "chat"),)),
    FactoryDataset("qa_speech_heldout", "speech_dialogue", (("qa_speech_heldout", "chat"),)),
    FactoryDataset(
        "utterances",
        "utterance",
        (
            ("utterances_asr", "asr"),
            ("utterances_ner", "ner"),
            ("utterances_sentiment", "sentiment"),
            ("utterances_multitask", "multitask"),
        ),
    ),
    FactoryDataset(
        "sentences",
        "utterance",
        (("sentences_asr", "asr"), ("sentences_ner", "ner"), ("sentences_sentiment", "sentiment")),
    ),
    FactoryDataset("ct", "ct", (("ct_reports", "report"), ("ct_spoken_reports", "spoken_report"))),
)

REGISTRY: dict[str, RegisteredDataset] = {
    name: RegisteredDataset(d.path, d.kind, task) for d in FACTORY_DATASETS for name, task in d.names
}
# Spoken questions / sentences with the stage-1 model's own answers (medlm.data.targets), written by `medlm
# data self-answers <stage-1 export> <root>/<source> <root>/<name>` or, by the recipes, beside the stage-1 run
REGISTRY |= {name: RegisteredDataset(name, "speech_dialogue", "chat") for name in SELF_ANSWER_SETS}


def register_dataset(name: str, path: str, kind: str, task: str | None = None) -> None:
    """Add (or replace) a named dataset."""
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(KINDS)}")
    task = task or TASKS[KINDS[kind]][0]
    if task not in TASKS[KINDS[kind]]:
        raise ValueError(f"task {task!r} does not apply to kind {kind!r}")
    REGISTRY[name] = RegisteredDataset(path, kind, task)


class DatasetEntry(Section):
    name: str
    uri: str | None = None  # overrides the registry path
    kind: str | None = None  # needed when the name is not registered
    task: str | None = None
    weight: float = Field(default=1.0, gt=0)


@dataclass(frozen=True)
class ResolvedDataset:
    name: str
    uri: str
    kind: str
    task: str
    weight: float


class DataSpec(Section):
    """Which shards to stream, how to mix them and how to batch them."""

    root: str = "s3://medlm/data"
    datasets: list[DatasetEntry] = Field(default_factory=lambda: [DatasetEntry(name="consult_text")])
    seed: int = 0
    max_audio_seconds: float = Field(default=60.0, gt=0)
    batch_tokens: int | None = Field(
        default=None, ge=1
    )  # token budget per batch (max len x rows); None = by rows
    batch_rows: int = Field(default=8, ge=1)  # rows per batch (also the cap with batch_tokens)
    bucketing: bool = True  # sort a buffer by length before cutting batches
    bucket_buffer: int = Field(default=256, ge=1)  # examples per bucketing buffer
    featurize_batch: int = Field(default=16, ge=1)  # rows per featurizer call
    # actor pool size; featurizers x featurizer_cpus + read_cpus must fit in the CPUs left to Ray Data
    featurizers: int = Field(default=1, ge=1)
    featurizer_cpus: float = Field(default=1.0, gt=0)
    read_cpus: float = Field(default=0.25, gt=0)  # per shard-reading task (I/O bound)
    quarantine_uri: str | None = None  # None = <root>/_quarantine
    # frozen encoder: its frames of every recording computed once (a Ray Data step before training) and stored
    # beside the shards (<dataset>/_encoder/<key>/); steps read them instead of running the encoder
    encoder_cache: bool = False
    # the encoder key the rows' frames come from (set by the run from its encoder; one given here must be the
    # run's encoder's, else the run is refused)
    encoder_key: str | None = None

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        if not self.datasets:
            raise ValueError("data.datasets is empty")
        for d in self.datasets:
            if d.name not in REGISTRY and not (d.uri and d.kind):
                raise ValueError(
                    f"dataset {d.name!r} is not registered; give it a uri and a kind "
                    f"(registered: {sorted(REGISTRY)})"
                )
            if d.kind is not None and d.kind not in KINDS:
                raise ValueError(
                    f"dataset {d.name!r}: unknown kind {d.kind!r}; expected one of {sorted(KINDS)}"
                )
        return self

    def resolved(self) -> list[ResolvedDataset]:
        out = []
        for d in self.datasets:
            reg = REGISTRY.get(d.name)
            kind = d.kind or reg.kind
            task = d.task or (
                reg.task if reg and (d.kind is None or d.kind == reg.kind) else TASKS[KINDS[kind]][0]
            )
            if task not in TASKS[KINDS[kind]]:
                raise ValueError(f"dataset {d.name!r}: task {task!r} does not apply to kind {kind!r}")
            uri = d.uri or (
                reg.path
                if "://" in reg.path or reg.path.startswith("/")
                else storage.join(self.root, reg.path)
            )
            out.append(ResolvedDataset(d.name, uri, kind, task, d.weight))
        return out

    def quarantine(self) -> str:
        return self.quarantine_uri or storage.join(self.root, "_quarantine")
