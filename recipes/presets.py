"""Presets: how big an experiment's model, data and training runs are, as YAML next to the job configs.

A preset names the medlm model preset every run uses, the ``make_data`` overrides, and for each training job
the job config it runs (``configs/<stem>.yaml``), its steps and its own overrides. The demo
(``configs/presets/demo-<name>.yaml``) and the reproductions (``configs/presets/reproduce-<name>.yaml``) load
theirs with :func:`load_preset` and turn a job into its typed config with :meth:`Preset.train_config`, the one
way an experiment configures a training run::

    p = load_preset("reproduce", "real", ["seed=1"])
    cfg = p.train_config("stage1", "run.name=sma-stage1", data_root="s3://medlm/data")
"""

from __future__ import annotations

import json

from pydantic import Field, field_validator

from medlm.config import ConfigError, Section, load_config, resolve_config_path
from medlm.data.factory import MakeDataConfig
from medlm.data.targets import SELF_ANSWER_SETS, check_self_answer_set, write_self_answer_sets
from medlm.train import TrainJobConfig

KINDS = ("demo", "reproduce")


class Preset(Section):
    """The sizes of one experiment preset (see the module docstring)."""

    model: str = "tiny"  # medlm.models preset of every SpeechLM run
    seed: int = 0  # data, training and CT seed
    data: list[str] = Field(default_factory=list)  # make_data overrides (e.g. consultations=400)
    jobs: dict[str, str] = Field(default_factory=dict)  # job -> configs/<stem>.yaml (default: the job's name)
    steps: int | None = Field(default=None, ge=1)  # optimizer steps of every run (None: the config's) ...
    job_steps: dict[str, int] = Field(default_factory=dict)  # ... unless set here per job (stage1: 120)
    job_overrides: dict[str, list[str]] = Field(default_factory=dict)  # job -> overrides of its YAML
    num_workers: int | None = Field(default=None, ge=1)  # Ray Train workers per run (None: the config's)
    use_gpu: bool = False
    # evaluation (reproductions)
    max_new_tokens: int = Field(default=32, ge=1)  # greedy decoding length
    eval_limit: int | None = Field(default=None, ge=1)  # rows per eval dataset (None = all)
    ct_config: str = "ct_clip"  # configs/<ct_config>.yaml
    ct: list[str] = Field(default_factory=list)  # ct_clip overrides
    # rows of each self-answer set a job trains on (medlm.data.targets.SELF_ANSWER_SETS; unlisted: all rows)
    self_answer_rows: dict[str, int] = Field(default_factory=dict)

    @field_validator("self_answer_rows")
    @classmethod
    def _known_sets(cls, rows: dict[str, int]) -> dict[str, int]:
        for name, n in rows.items():
            check_self_answer_set(name)
            if n < 1:
                raise ValueError(f"self_answer_rows.{name} must be >= 1, got {n}")
        return rows

    def job(self, job: str) -> str:
        """The config stem ``job`` runs."""
        return self.jobs.get(job, job)

    def job_steps_of(self, job: str) -> int | None:
        return self.job_steps.get(job, self.steps)

    def data_config(self, output: str) -> MakeDataConfig:
        return load_config(
            MakeDataConfig, "make_data.yaml", [f"output={output}", f"seed={self.seed}", *self.data]
        )

    def train_config(
        self,
        job: str,
        *overrides: str,
        data_root: str | None = None,
        storage_path: str | None = None,
        steps: int | None = None,
    ) -> TrainJobConfig:
        """``job``'s config as this preset runs it: its YAML, the preset's overrides for it, the model preset,
        seed, steps (one checkpoint, at the end), workers and device, then ``overrides``."""
        steps = steps or self.job_steps_of(job)
        return load_config(
            TrainJobConfig,
            f"{self.job(job)}.yaml",
            [
                *self.job_overrides.get(job, []),
                f"model.preset={self.model}",
                f"data.seed={self.seed}",
                f"optim.seed={self.seed}",
                f"run.use_gpu={str(self.use_gpu).lower()}",
                *([f"optim.steps={steps}", f"optim.checkpoint_every={steps}"] if steps else []),
                *([f"run.num_workers={self.num_workers}"] if self.num_workers else []),
                *([f"data.root={data_root}"] if data_root else []),
                *([f"run.storage_path={storage_path}"] if storage_path else []),
                *overrides,
            ],
        )

    def self_answers(self, job: str, model_dir: str, data_root: str, out_root: str) -> list[str]:
        """Where ``job``'s config trains on a model's own answers (its datasets include self-answer sets), the
        ``data.datasets=`` override that points them at ``model_dir``'s answers, written under ``out_root``
        first (kept if already there); ``[]`` for a job without such sets."""
        entries = self.train_config(job).data.datasets
        names = [e.name for e in entries if e.name in SELF_ANSWER_SETS]
        if not names:
            return []
        limits = {n: self.self_answer_rows.get(n) for n in names}
        uris = write_self_answer_sets(model_dir, data_root, out_root, limits)
        pointed = [e.model_copy(update={"uri": uris[e.name]}) if e.name in uris else e for e in entries]
        return [f"data.datasets={json.dumps([e.model_dump(exclude_none=True) for e in pointed])}"]


def preset_file(kind: str, name: str) -> str:
    return f"presets/{kind}-{name}.yaml"


def load_preset(kind: str, name: str, overrides: list[str] | None = None) -> Preset:
    """The ``kind`` (demo | reproduce) preset ``name`` from ``configs/presets/``
    (+ ``key=value`` overrides)."""
    if kind not in KINDS:
        raise ValueError(f"unknown experiment {kind!r}; choose from {KINDS}")
    try:
        resolve_config_path(preset_file(kind, name))
    except ConfigError:
        raise ValueError(f"unknown {kind} preset {name!r}; choose from {preset_names(kind)}") from None
    return load_config(Preset, preset_file(kind, name), overrides)


def preset_names(kind: str) -> list[str]:
    folder = resolve_config_path("presets")
    return sorted(p.stem.removeprefix(f"{kind}-") for p in folder.glob(f"{kind}-*.yaml"))
