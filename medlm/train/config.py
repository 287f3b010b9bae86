"""Config of every SpeechLM training job (stage 1, stage 2, joint SFT, multi-task).

The four jobs differ only in their YAML (which data, which parameters train, which losses), not in
code: ``configs/stage1.yaml`` ... ``configs/multitask.yaml`` all load into :class:`TrainJobConfig`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medlm.config import Section
from medlm.data import DataSpec
from medlm.models import ModelSpec


class OptimSpec(Section):
    """Optimisation and DeepSpeed settings."""

    steps: int = Field(default=40, ge=1)  # optimizer steps
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = Field(default=4, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    grad_accum: int = Field(default=1, ge=1)
    clip: float = 1.0
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False  # ZeRO-Offload (DeepSpeedCPUAdam)
    bf16: bool = False
    seed: int = 0
    log_every: int = Field(default=5, ge=1)
    eval_every: int = Field(default=0, ge=0)  # 0 = only at the end (if a val set is configured)
    checkpoint_every: int = Field(default=20, ge=1)


class RunSpec(Section):
    """Where and on what the job runs."""

    name: str | None = None  # unique run id; the same name resumes that run
    storage_path: str = "s3://medlm/runs"  # checkpoints + export + logs (local dir or s3://)
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    # how workers spread over nodes
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: int = Field(default=2, ge=0)
    keep_checkpoints: int = Field(default=2, ge=1)
    tensorboard: bool = True


class TrainJobConfig(Section):
    job: Literal["stage1", "stage2", "joint_sft", "multitask"] = "stage1"
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    val: DataSpec | None = None  # evaluated (loss) every optim.eval_every steps and at the end
    optim: OptimSpec = OptimSpec()
    run: RunSpec = RunSpec()
