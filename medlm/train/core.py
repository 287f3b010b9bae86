"""The training core: Ray Train ``TorchTrainer`` + DeepSpeed ZeRO over a SpeechLM, fed by Ray Data.

One function per side:

* :func:`train` (driver) builds the datasets, the ``TorchTrainer`` and runs it; the run is named
  ``run.name`` under ``run.storage_path``, so relaunching with the same name resumes it.
* :func:`train_loop` (every worker) runs a :class:`Recipe`: setup (model, ``deepspeed.initialize``),
  resume from ``ray.train.get_checkpoint()`` (weights, optimizer, scheduler *and* data position), then
  step / log / evaluate / checkpoint (every rank) until done, and export a consolidated
  ``save_pretrained`` model.

:func:`build_engine`, :func:`endless` and :func:`seed_everything` are the pieces every training loop shares
(the CT-CLIP phases in :mod:`medlm.ct.job` use them too); :func:`to_device` moves a SpeechLM batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from medlm import paths, storage
from medlm.train.config import OptimSpec, TrainJobConfig

log = logging.getLogger("medlm.train")

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12}  # dense bf16


# --- pure helpers -----------------------------------------------------------------------------


def deepspeed_config(o: OptimSpec, micro_batch: int) -> dict[str, Any]:
    """The DeepSpeed config for our optimisation settings (the optimizer itself is passed in)."""
    zero: dict[str, Any] = {"stage": o.zero_stage}
    if o.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if o.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": o.grad_accum,
        "gradient_clipping": o.clip,
        "zero_optimization": zero,
        "bf16": {"enabled": o.bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def lr_lambda(o: OptimSpec):
    """Linear warmup, then cosine decay to ``min_lr_ratio`` (or constant)."""

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / max(1, o.warmup_steps)
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, o.steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_FLOPS.items() if k in device_name), None)


def export_dir(cfg: TrainJobConfig) -> str:
    return storage.join(cfg.run.storage_path, cfg.run.name, "export")


def history_uri(cfg: TrainJobConfig) -> str:
    """Rank 0's logged metrics (all attempts, restored from checkpoints on resume)."""
    return storage.join(cfg.run.storage_path, cfg.run.name, "history.json")


# --- shared by every training loop (SpeechLM jobs, CT-CLIP phases) -----------------------------


def build_engine(model, o: OptimSpec, micro_batch: int):
    """AdamW over the trainable parameters + the warmup/cosine schedule, wrapped by ``deepspeed.initialize``
    (bf16 when ``o.bf16``); returns (engine, scheduler)."""
    import deepspeed
    import torch

    if o.bf16:
        model = model.to(torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o))
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(o, micro_batch)
    )
    return engine, scheduler


def endless(epoch_batches: Callable[[int], Iterable], skip: int = 0) -> Iterator:
    """Batches of epoch 0, 1, 2, ... (``epoch_batches(epoch)``) without end; the first ``skip`` are dropped
    (that is how a resumed run continues at its data position). An empty epoch is an error."""
    seen, epoch = 0, 0
    while True:
        n = 0
        for batch in epoch_batches(epoch):
            n += 1
            seen += 1
            if seen > skip:
                yield batch
        if n == 0:
            raise ValueError("this worker's data shard yields no batch (fewer rows than one batch?)")
        epoch += 1


def to_device(batch: dict, device, bf16: bool = False) -> dict:
    import torch

    batch = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}
    if bf16 and "input_features" in batch:
        batch["input_features"] = batch["input_features"].to(torch.bfloat16)
    return batch


def all_reduce(values: list, dtype, device, op: str = "SUM"):
    """``values`` as a tensor reduced over all ranks (unchanged outside a process group)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=dtype, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t


# --- the SpeechLM jobs' worker side (stage1, stage2, joint_sft, multitask) --------------------------

LOSS_KEYS = ("loss", "lm_loss", "cls_loss", "kd_loss", "ctc_loss")


class LossWindow:
    """Loss sums and token counts since the last log line; ``reduce`` averages them over all ranks."""

    def __init__(self):
        self.sums, self.counts = dict.fromkeys(LOSS_KEYS, 0.0), dict.fromkeys(LOSS_KEYS, 0)
        self.tokens, self.wait, self.t0 = 0, 0.0, time.perf_counter()

    def add(self, out, tokens: int) -> None:
        self.tokens += tokens
        for k in LOSS_KEYS:
            v = getattr(out, k, None)
            if v is not None:
                self.sums[k] += float(v.detach())
                self.counts[k] += 1

    def reduce(self, device) -> tuple[dict[str, float], int]:
        """Mean of each loss over the window's micro-batches on all ranks, and the tokens all ranks saw."""
        import torch

        values = [self.sums[k] for k in LOSS_KEYS] + [self.counts[k] for k in LOSS_KEYS] + [self.tokens]
        t = all_reduce(values, torch.float64, device)
        n = len(LOSS_KEYS)
        return {k: float(t[i] / t[n + i]) for i, k in enumerate(LOSS_KEYS) if t[n + i] > 0}, int(t[-1])


class Recipe:
    """One Ray Train worker's run, read top to bottom as :meth:`run`: setup -> resume -> (step -> log ->
    evaluate -> checkpoint) until ``optim.steps`` -> export. Every rank runs it; rank 0 logs and exports."""

    def __init__(self, config: dict):
        import ray.train

        self.cfg = TrainJobConfig.model_validate(config["job"])
        self.o = self.cfg.optim
        self.fault_step = config.get("fault_at_step", -1)
        self.ctx = ray.train.get_context()
        self.rank, self.world = self.ctx.get_world_rank(), self.ctx.get_world_size()
        self.lockstep = self.world > 1  # ranks draw different batches: SpeechLM.forward(lockstep=True)
        self.state: dict[str, Any] = {"step": 0, "batches": 0, "tokens": 0, "resumes": 0, "history": []}

    def setup(self) -> None:
        import ray.train
        import torch

        from medlm.models import build_model

        seed_everything(self.o.seed)
        model, self.processor = build_model(self.cfg.model)
        if self.cfg.data.encoder_key:  # the rows carry cached frames: they must be this encoder's
            from medlm.data.encoder_cache import check_frozen
            from medlm.data.frames import check_key
            from medlm.models.encoder import encoder_fingerprint

            check_frozen(self.cfg.model, model.encoder)
            check_key(
                self.cfg.data.encoder_key,
                encoder_fingerprint(model.encoder, model.frontend, key_spec(self.cfg).dtype),
            )
        self.n_params = sum(p.numel() for p in model.parameters())
        self.engine, self.scheduler = build_engine(model, self.o, self.cfg.data.batch_rows)
        self.device = self.engine.device
        self.flops_peak = peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
        self.val_ds = ray.train.get_dataset_shard("val") if self.cfg.val else None
        self.writer, self.tb_dir = None, None
        if self.rank == 0 and self.cfg.run.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb_dir = tempfile.TemporaryDirectory(prefix="medlm-tb-")  # copied to the run dir at export
            self.writer = SummaryWriter(self.tb_dir.name)

    def resume(self) -> None:
        """Weights, optimizer, scheduler and data position from Ray Train's latest checkpoint, if any."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as d:
                self.engine.load_checkpoint(d, tag="ds", load_module_strict=False)
                self.state = json.loads((Path(d) / "trainer_state.json").read_text())
            self.state["resumes"] += 1
            if self.rank == 0:
                log.info(
                    "resumed at step %d (data position: %d batches)",
                    self.state["step"],
                    self.state["batches"],
                )

    def batches(self) -> Iterator[dict]:
        import ray.train

        from medlm.data.pipeline import iter_train_batches

        shard = ray.train.get_dataset_shard("train")
        return endless(
            lambda epoch: iter_train_batches(shard, self.processor, self.cfg.data, epoch=epoch),
            skip=self.state["batches"],
        )

    def step(self, batches: Iterator[dict], window: LossWindow) -> None:
        """One optimizer step: ``grad_accum`` micro-batches forward and backward (DeepSpeed steps each)."""
        for _ in range(self.o.grad_accum):
            t = time.perf_counter()
            batch = to_device(next(batches), self.device, self.o.bf16)
            window.wait += time.perf_counter() - t
            out = self.engine(**batch, lockstep=self.lockstep)
            self.engine.backward(out.loss)
            self.engine.step()
            ntok = int(batch["attention_mask"].sum())
            self.state["batches"] += 1
            self.state["tokens"] += ntok
            window.add(out, ntok)
        self.state["step"] += 1

    def log(self, window: LossWindow) -> dict[str, float]:
        """Rank-averaged losses, lr, tokens/s (and MFU on known GPUs) -> history, log line, TensorBoard."""
        step = self.state["step"]
        dt = time.perf_counter() - window.t0
        means, tokens = window.reduce(self.device)
        tok_s = tokens / dt
        metrics = {
            "step": step,
            **means,
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_per_s": tok_s,
            "data_wait_frac": window.wait / dt,
        }
        if self.flops_peak:
            metrics["mfu"] = 6 * self.n_params * tok_s / (self.flops_peak * self.world)
        self.state["history"].append(metrics)
        if self.rank == 0:
            log.info(
                "step %d/%d " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "step"),
                step,
                self.o.steps,
            )
            if self.writer:
                for k, v in metrics.items():
                    self.writer.add_scalar(f"train/{k}", v, step)
        return metrics

    def evaluate(self, metrics: dict) -> None:
        metrics["val_loss"] = evaluate_loss(self.engine, self.val_ds, self.processor, self.cfg, self.lockstep)
        if self.rank == 0:
            log.info("step %d val_loss=%.4f", self.state["step"], metrics["val_loss"])
            if self.writer:
                self.writer.add_scalar("val/loss", metrics["val_loss"], self.state["step"])

    def checkpoint(self, metrics: dict) -> None:
        """Every rank writes its DeepSpeed shard, then reports; Ray merges them into one checkpoint."""
        import ray.train

        with tempfile.TemporaryDirectory(prefix="medlm-ckpt-") as tmp:  # report() uploads it before returning
            self.engine.save_checkpoint(tmp, tag="ds", exclude_frozen_parameters=True)
            if self.rank == 0:
                (Path(tmp) / "trainer_state.json").write_text(json.dumps(self.state))
            ray.train.report(
                {**metrics, "step": self.state["step"]}, checkpoint=ray.train.Checkpoint.from_directory(tmp)
            )

    def export(self) -> None:
        """The run's record (history, resumes, tokens, workers, nodes) and a consolidated ``from_pretrained``
        model (ZeRO-3 shards gathered) under the run's directory."""
        import torch

        if self.writer:
            self.writer.close()
            storage.copy_tree(
                self.tb_dir.name, storage.join(self.cfg.run.storage_path, self.cfg.run.name, "tensorboard")
            )
            self.tb_dir.cleanup()
        nodes = int(all_reduce([self.ctx.get_node_rank()], torch.int64, self.device, op="MAX")) + 1
        state_dict = self.engine._zero3_consolidated_16bit_state_dict() if self.o.zero_stage == 3 else None
        if self.rank != 0:
            return
        record = {
            **{k: self.state[k] for k in ("history", "resumes", "tokens")},
            "workers": self.world,
            "nodes": nodes,
        }
        storage.write_text(history_uri(self.cfg), json.dumps(record))
        with tempfile.TemporaryDirectory(prefix="medlm-export-") as tmp:
            self.engine.module.save_pretrained(
                tmp, **({"state_dict": state_dict} if state_dict is not None else {})
            )
            self.processor.save_pretrained(tmp)
            storage.copy_tree(tmp, export_dir(self.cfg))
        log.info("exported model to %s", export_dir(self.cfg))

    def run(self) -> None:
        self.setup()
        self.resume()
        batches, window = self.batches(), LossWindow()
        self.engine.train()
        while self.state["step"] < self.o.steps:
            self.step(batches, window)
            step, last = self.state["step"], self.state["step"] == self.o.steps
            if step == self.fault_step and self.rank == self.world - 1:
                _inject_fault(self.cfg, self.rank, step)
            metrics: dict[str, float] = {}
            if step % self.o.log_every == 0 or last:
                metrics, window = self.log(window), LossWindow()
            if self.val_ds is not None and ((self.o.eval_every and step % self.o.eval_every == 0) or last):
                self.evaluate(metrics)
            if step % self.o.checkpoint_every == 0 or last:
                self.checkpoint(metrics)
            elif metrics:
                import ray.train

                ray.train.report(metrics)
        self.export()


def worker_setup() -> None:
    """What every training loop runs first on its Ray Train worker: DeepSpeed's accelerator for this node, and
    INFO logging (workers start at WARNING)."""
    import torch

    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    worker_setup()
    Recipe(config).run()


def _inject_fault(cfg: TrainJobConfig, rank: int, step: int) -> None:
    """Kill this worker process once per run (a marker in the run dir stops later attempts).

    It first waits a few controller polls (Ray Train's health check runs every 2 s) so that the
    last checkpoint is registered: the test then exercises resume-from-checkpoint.
    """
    marker = storage.join(cfg.run.storage_path, cfg.run.name, "fault-injected")
    if storage.exists(marker):
        return
    storage.write_text(marker, str(step))
    time.sleep(6)
    log.error("fault injection: killing rank %d at step %d", rank, step)
    os._exit(1)


def evaluate_loss(engine, val_ds, processor, cfg: TrainJobConfig, lockstep: bool = False) -> float:
    """Mean loss over the whole val set, on every rank (ZeRO-3 forwards need all ranks; ``lockstep`` as in
    training)."""
    import torch

    from medlm.data.pipeline import iter_train_batches

    engine.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in iter_train_batches(val_ds, processor, cfg.val):
            total += float(engine(**to_device(batch, engine.device, cfg.optim.bf16), lockstep=lockstep).loss)
            n += 1
    engine.train()
    return total / max(1, n)


# --- driver side ------------------------------------------------------------------------------


def key_spec(cfg: TrainJobConfig):
    """The model spec whose ``dtype`` the encoder-cache key uses: the weights as the run holds them (bf16 in
    a bf16 run, so its export, whose encoder went through bf16, keeps the key of the encoder it came from)."""
    return cfg.model.model_copy(update={"dtype": "bfloat16"}) if cfg.optim.bf16 else cfg.model


def with_encoder_cache(cfg: TrainJobConfig) -> TrainJobConfig:
    """``data.encoder_cache``: the frozen encoder's frames of the train (and val) shards computed where
    they are missing (a Ray Data step, one encoder actor per CPU of the cluster), and the run's data reading
    them."""
    import ray

    from medlm.data.encoder_cache import prepare

    actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
    t0 = time.perf_counter()
    spec = key_spec(cfg)
    update = {"data": prepare(cfg.data, spec, actors)}
    if cfg.val:
        update["val"] = prepare(cfg.val.model_copy(update={"encoder_cache": True}), spec, actors)
    if update["data"].encoder_key:
        log.info(
            "encoder frames ready (key %s) in %.1f s", update["data"].encoder_key, time.perf_counter() - t0
        )
    return cfg.model_copy(update=update)


def train(cfg: TrainJobConfig) -> dict[str, Any]:
    """Run one training job on the current Ray cluster; returns a summary."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from medlm.data.pipeline import build_dataset
    from medlm.models.build import check_init_from

    check_init_from(cfg.model)  # a structure that contradicts the export fails here, before any worker starts
    if cfg.data.encoder_cache:
        cfg = with_encoder_cache(cfg)
    if cfg.run.name is None:
        cfg = cfg.model_copy(
            update={"run": cfg.run.model_copy(update={"name": f"{cfg.job}-{time.strftime('%Y%m%d-%H%M%S')}"})}
        )
    datasets = {"train": build_dataset(cfg.data, cfg.model)}
    if cfg.val:
        datasets["val"] = build_dataset(cfg.val, cfg.model)
    for ds in datasets.values():  # the workers log progress (tokens/s, data wait); per-operator bars
        ds.context.enable_progress_bars = False  # from the split coordinator would flood the driver's log

    storage_path, fs = cfg.run.storage_path, None
    if storage.is_s3(storage_path):
        storage.makedirs(storage_path)
        fs, storage_path = storage.s3_filesystem(), storage_path[len("s3://") :]

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "job": cfg.model_dump(mode="json"),
            "fault_at_step": paths.fault_at_step(),
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.run.num_workers,
            use_gpu=cfg.run.use_gpu,
            resources_per_worker={"CPU": cfg.run.cpus_per_worker},
            placement_strategy=cfg.run.placement_strategy,
        ),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=storage_path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
        ),
        datasets=datasets,
        # Each dataset keeps the execution options build_dataset chose (preserve_order: the equal split
        # then gives each rank the same rows on every run, so a resumed run continues on the same data);
        # without them Ray Train resets the options from the driver's context.
        dataset_config=DataConfig(
            datasets_to_split=["train"],
            execution_options={k: ds.context.execution_options for k, ds in datasets.items()},
        ),
    )
    t0 = time.time()
    result = trainer.fit()
    checkpoint = result.checkpoint.path if result.checkpoint else None
    if checkpoint and fs is not None:
        checkpoint = f"s3://{checkpoint}"
    record = json.loads(storage.read_text(history_uri(cfg)))
    summary = {
        "job": cfg.job,
        "run": cfg.run.name,
        "export": export_dir(cfg),
        "checkpoint": checkpoint,
        "metrics": record["history"][-1] if record["history"] else {},
        "history": record["history"],
        "restarts": record["resumes"],
        "tokens": record["tokens"],
        "workers": record["workers"],
        "nodes": record["nodes"],
        "wall_s": round(time.time() - t0, 1),
    }
    return summary
