"""The training core: Ray Train ``TorchTrainer`` + DeepSpeed ZeRO over a SpeechLM, fed by Ray Data.

One function per side:

* :func:`train` (driver) builds the datasets, the ``TorchTrainer`` and runs it; the run is named
  ``run.name`` under ``run.storage_path``, so relaunching with the same name resumes it.
* :func:`train_loop` (every worker) builds the model, wraps it with ``deepspeed.initialize``,
  resumes from ``ray.train.get_checkpoint()`` (weights, optimizer, scheduler *and* data position),
  trains, checkpoints on every rank, and exports a consolidated ``save_pretrained`` model.
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
from typing import Any, Iterator

import numpy as np

from medlm import storage
from medlm.train.config import OptimSpec, TrainJobConfig

log = logging.getLogger("medlm.train")

FAULT_ENV = "MEDLM_FAULT_AT_STEP"  # fault injection for recovery tests: "<step>" kills the last rank once
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


# --- worker side ------------------------------------------------------------------------------

def _batches(cfg: TrainJobConfig, shard, processor, skip: int) -> Iterator[dict]:
    """Endless stream of padded batches from this worker's shard; the first ``skip`` are dropped
    (that is how a resumed run continues at its data position)."""
    from medlm.data.pipeline import iter_train_batches

    seen, epoch = 0, 0
    while True:
        for batch in iter_train_batches(shard, processor, cfg.data, epoch=epoch):
            seen += 1
            if seen > skip:
                yield batch
        epoch += 1


LOSS_KEYS = ("loss", "lm_loss", "cls_loss", "kd_loss")


def _new_window() -> dict[str, Any]:
    return {"sums": dict.fromkeys(LOSS_KEYS, 0.0), "counts": dict.fromkeys(LOSS_KEYS, 0), "tokens": 0,
            "wait": 0.0, "t0": time.perf_counter()}


def _all_reduce(values: list, dtype, device, op: str = "SUM"):
    """``values`` as a tensor reduced over all ranks (unchanged outside a process group)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=dtype, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t


def _reduce_window(window: dict, device) -> tuple[dict[str, float], int]:
    """Mean of each loss over the window's micro-batches on all ranks, and the tokens all ranks saw."""
    import torch

    values = [window["sums"][k] for k in LOSS_KEYS] + [window["counts"][k] for k in LOSS_KEYS] + [window["tokens"]]
    t = _all_reduce(values, torch.float64, device)
    n = len(LOSS_KEYS)
    means = {k: float(t[i] / t[n + i]) for i, k in enumerate(LOSS_KEYS) if t[n + i] > 0}
    return means, int(t[-1])


def _count_tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum())


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import torch

    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    import deepspeed
    import ray.train

    from medlm.models import build_model

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # workers start with WARNING
    cfg = TrainJobConfig.model_validate(config["job"])
    o = cfg.optim
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(o.seed)

    model, processor = build_model(cfg.model)
    model.lockstep = world > 1  # ranks draw different batches: see SpeechLM.lockstep
    if o.bf16:
        model = model.to(torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler,
        config=deepspeed_config(o, cfg.data.batch_rows))
    device = engine.device

    state: dict[str, Any] = {"step": 0, "batches": 0, "tokens": 0, "resumes": 0, "history": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag="ds", load_module_strict=False)
            state = json.loads((Path(d) / "trainer_state.json").read_text())
        state["resumes"] += 1
        if rank == 0:
            log.info("resumed at step %d (data position: %d batches)", state["step"], state["batches"])

    fault_step = config.get("fault_at_step", -1)
    writer = None
    tb_dir = Path(tempfile.mkdtemp(prefix="medlm-tb-"))
    if rank == 0 and cfg.run.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(tb_dir))

    val_ds = ray.train.get_dataset_shard("val") if cfg.val else None
    batches = _batches(cfg, ray.train.get_dataset_shard("train"), processor, skip=state["batches"])
    flops_peak = peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None

    engine.train()
    window = _new_window()
    while state["step"] < o.steps:
        for _ in range(o.grad_accum):
            t = time.perf_counter()
            batch = next(batches)
            window["wait"] += time.perf_counter() - t
            batch = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}
            if o.bf16 and "input_features" in batch:
                batch["input_features"] = batch["input_features"].to(torch.bfloat16)
            out = engine(**batch)
            engine.backward(out.loss)
            engine.step()
            state["batches"] += 1
            ntok = _count_tokens(batch)
            state["tokens"] += ntok
            window["tokens"] += ntok
            for k in LOSS_KEYS:
                v = getattr(out, k, None)
                if v is not None:
                    window["sums"][k] += float(v.detach())
                    window["counts"][k] += 1
        state["step"] += 1
        step = state["step"]

        if step == fault_step and rank == world - 1:
            _inject_fault(cfg, rank, step)

        metrics: dict[str, float] = {}
        if step % o.log_every == 0 or step == o.steps:
            dt = time.perf_counter() - window["t0"]
            means, tokens = _reduce_window(window, device)
            tok_s = tokens / dt
            metrics = {"step": step, **means, "lr": scheduler.get_last_lr()[0],
                       "tokens_per_s": tok_s, "data_wait_frac": window["wait"] / dt}
            if flops_peak:
                metrics["mfu"] = 6 * n_params * tok_s / (flops_peak * world)
            window = _new_window()
            state["history"].append(metrics)
            if rank == 0:
                log.info("step %d/%d " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "step"),
                         step, o.steps)
                if writer:
                    for k, v in metrics.items():
                        writer.add_scalar(f"train/{k}", v, step)
        if val_ds is not None and ((o.eval_every and step % o.eval_every == 0) or step == o.steps):
            metrics["val_loss"] = evaluate_loss(engine, val_ds, processor, cfg)
            if rank == 0:
                log.info("step %d val_loss=%.4f", step, metrics["val_loss"])
                if writer:
                    writer.add_scalar("val/loss", metrics["val_loss"], step)

        if step % o.checkpoint_every == 0 or step == o.steps:
            _checkpoint(engine, state, metrics, rank)
        elif metrics:
            ray.train.report(metrics)

    if writer:
        writer.close()
        storage.copy_tree(str(tb_dir), storage.join(cfg.run.storage_path, cfg.run.name, "tensorboard"))
    nodes = int(_all_reduce([ctx.get_node_rank()], torch.int64, device, op="MAX")) + 1  # nodes the group spans
    if rank == 0:
        record = {**{k: state[k] for k in ("history", "resumes", "tokens")}, "workers": world, "nodes": nodes}
        storage.write_text(history_uri(cfg), json.dumps(record))
    _export(engine, processor, cfg, rank)


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


def evaluate_loss(engine, val_ds, processor, cfg: TrainJobConfig) -> float:
    """Mean loss over the whole val set, on every rank (ZeRO-3 forwards need all ranks)."""
    import torch

    from medlm.data.pipeline import iter_train_batches

    engine.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in iter_train_batches(val_ds, processor, cfg.val):
            batch = {k: (v.to(engine.device) if hasattr(v, "to") else v) for k, v in batch.items()}
            total += float(engine(**batch).loss)
            n += 1
    engine.train()
    return total / max(1, n)


def _checkpoint(engine, state: dict, metrics: dict, rank: int) -> None:
    """Every rank writes its DeepSpeed shard, then reports; Ray merges them into one checkpoint."""
    import ray.train

    tmp = tempfile.mkdtemp(prefix="medlm-ckpt-")
    engine.save_checkpoint(tmp, tag="ds", exclude_frozen_parameters=True)
    if rank == 0:
        (Path(tmp) / "trainer_state.json").write_text(json.dumps(state))
    ray.train.report({**metrics, "step": state["step"]}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _export(engine, processor, cfg: TrainJobConfig, rank: int) -> None:
    """Consolidate the weights (gathering ZeRO-3 shards) and write a ``from_pretrained`` model."""
    state_dict = engine._zero3_consolidated_16bit_state_dict() if cfg.optim.zero_stage == 3 else None
    if rank != 0:
        return
    module = engine.module
    tmp = tempfile.mkdtemp(prefix="medlm-export-")
    if state_dict is not None:
        module.save_pretrained(tmp, state_dict=state_dict)
    else:
        module.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    storage.copy_tree(tmp, export_dir(cfg))
    log.info("exported model to %s", export_dir(cfg))


# --- driver side ------------------------------------------------------------------------------

def train(cfg: TrainJobConfig) -> dict[str, Any]:
    """Run one training job on the current Ray cluster; returns a summary."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from medlm.data.pipeline import build_dataset

    if cfg.run.name is None:
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": f"{cfg.job}-{time.strftime('%Y%m%d-%H%M%S')}"})})
    datasets = {"train": build_dataset(cfg.data, cfg.model)}
    if cfg.val:
        datasets["val"] = build_dataset(cfg.val, cfg.model)
    for ds in datasets.values():  # the workers log progress (tokens/s, data wait); per-operator bars
        ds.context.enable_progress_bars = False  # from the split coordinator would flood the driver's log

    storage_path, fs = cfg.run.storage_path, None
    if storage.is_s3(storage_path):
        storage.makedirs(storage_path)
        fs, storage_path = storage.s3_filesystem(), storage_path[len("s3://"):]

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"job": cfg.model_dump(mode="json"),
                           "fault_at_step": int(os.environ.get(FAULT_ENV, "-1"))},
        scaling_config=ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker={"CPU": cfg.run.cpus_per_worker},
                                     placement_strategy=cfg.run.placement_strategy),
        run_config=RunConfig(name=cfg.run.name, storage_path=storage_path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints)),
        datasets=datasets,
        # Each dataset keeps the execution options build_dataset chose (preserve_order: the equal split
        # then gives each rank the same rows on every run, so a resumed run continues on the same data);
        # without them Ray Train resets the options from the driver's context.
        dataset_config=DataConfig(datasets_to_split=["train"],
                                  execution_options={k: ds.context.execution_options for k, ds in datasets.items()}),
    )
    t0 = time.time()
    result = trainer.fit()
    checkpoint = result.checkpoint.path if result.checkpoint else None
    if checkpoint and fs is not None:
        checkpoint = f"s3://{checkpoint}"
    record = json.loads(storage.read_text(history_uri(cfg)))
    summary = {"job": cfg.job, "run": cfg.run.name, "export": export_dir(cfg), "checkpoint": checkpoint,
               "metrics": record["history"][-1] if record["history"] else {}, "history": record["history"],
               "restarts": record["resumes"], "tokens": record["tokens"], "workers": record["workers"],
               "nodes": record["nodes"], "wall_s": round(time.time() - t0, 1)}
    return summary
