"""The Python part of ``bench/gpu_check.sh``: a few stage 1 / stage 2 steps of the ``base`` shape on one GPU.

Each stage runs the training job itself, :func:`medlm.train.core.train` (Ray Train ``TorchTrainer`` +
DeepSpeed, fed by the Ray Data pipeline), on the prod cluster config (``configs/<stage>_prod.yaml``: preset
base, bf16, ZeRO-2, its batch sizes and featurizers) with the few overrides that one machine with one GPU
needs (:func:`overrides`). The numbers are the job's own log windows (``medlm.train.core.Recipe.log``):
``mfu`` = 6 x all parameters x tokens/s / the GPU's dense bf16 peak (``core.PEAK_FLOPS``), and
``data_wait_frac`` = the share of the window's wall time the training loop spent waiting on the data iterator
(``next(batches)`` + the copy to the GPU). The first window holds the pipeline's and CUDA's start-up;
``steady`` averages the windows after it.

    python bench/gpu_check.py --stage stage1 --data runs/gpu_check/data --out $OUT   # on the GPU machine
    python bench/gpu_check.py --summary --out $OUT                                  # $OUT/gpu_check.md
    python bench/gpu_check.py --stage stage1 --data DIR --out DIR --smoke            # CPU, tiny preset:
                                                                                     #   the plumbing

Written without a GPU (none was lent to the session that wrote it): it imports, and ``--smoke`` runs the same
path on CPU with the tiny preset; the GPU run itself has not happened yet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = {"stage1": "configs/stage1_prod.yaml", "stage2": "configs/stage2_prod.yaml"}
WORKER_CPUS = 4  # the training worker's CPUs; the rest of the machine goes to Ray Data


def overrides(
    stage: str, data: str, workdir: str, steps: int, log_every: int, featurizers: int, smoke: bool = False
) -> list[str]:
    """What changes from the prod config on one machine with one GPU: one worker, local data and runs, no
    stage-1 export (random base weights: the real checkpoints do not travel), featurizers that fit its CPUs,
    one checkpoint (at the last step, as every run ends), no TensorBoard (not installed there), no retries."""
    out = [
        f"data.root={data}",
        f"data.featurizers={featurizers}",
        f"run.storage_path={workdir}",
        f"run.name=gpu-check-{stage}",
        "run.num_workers=1",
        f"run.cpus_per_worker={WORKER_CPUS}",
        "run.tensorboard=false",
        "run.max_failures=0",
        f"optim.steps={steps}",
        f"optim.log_every={log_every}",
        f"optim.checkpoint_every={steps}",
        f"optim.warmup_steps={min(steps, 10)}",
        "model.init_from=null",
    ]
    if smoke:  # CPU plumbing check: the tiny shapes, no GPU, fp32, a 2-core budget
        out += [
            "model.preset=tiny",
            "run.use_gpu=false",
            "optim.bf16=false",
            "run.cpus_per_worker=0.5",
            "data.featurizer_cpus=0.25",
            "data.featurizers=1",
        ]
    return out


def run_stage(args) -> dict:
    os.environ.setdefault("MEDLM_STACK", "external")  # never the embedded S3 server: the data are local files
    import torch

    from medlm.jobs import JOBS
    from medlm.stack import init_ray
    from medlm.train.core import PEAK_FLOPS, train

    cores = os.cpu_count() or 2
    featurizers = max(
        1, min(JOBS[args.stage].load(STAGES[args.stage]).data.featurizers, cores - WORKER_CPUS - 2)
    )
    ov = overrides(
        args.stage,
        str(Path(args.data).resolve()),
        str(Path(args.workdir).resolve() / args.stage),
        args.steps,
        args.log_every,
        featurizers,
        args.smoke,
    )
    cfg = JOBS[args.stage].load(STAGES[args.stage], ov)
    init_ray(num_cpus=None)  # a local Ray: all CPUs and GPUs of this machine
    t0 = time.time()
    summary = train(cfg)  # the driver never touches CUDA before this: the worker gets the whole GPU
    history = summary["history"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({cores} cores)"
    steady = history[1:] or history  # the first window holds the start-up (pipeline, CUDA, allocator)

    def mean(key: str) -> float | None:
        values = [h[key] for h in steady if key in h]
        return sum(values) / len(values) if values else None

    result = {
        "stage": args.stage,
        "device": device,
        "config": STAGES[args.stage],
        "overrides": ov,
        "peak_flops": next((v for k, v in PEAK_FLOPS.items() if k in device), None),
        "preset": cfg.model.preset,
        "batch_rows": cfg.data.batch_rows,
        "batch_tokens": cfg.data.batch_tokens,
        "zero_stage": cfg.optim.zero_stage,
        "bf16": cfg.optim.bf16,
        "steps": cfg.optim.steps,
        "steady": {
            "windows": len(steady),
            "mfu": mean("mfu"),
            "data_wait_frac": mean("data_wait_frac"),
            "tokens_per_s": mean("tokens_per_s"),
            "loss": steady[-1].get("loss") if steady else None,
        },
        "history": history,
        "wall_s": round(time.time() - t0, 1),
    }
    out = Path(args.out) / f"{args.stage}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("stage", "device", "steady", "wall_s")}, indent=2))
    return result


def fmt(v, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def summarize(out: Path) -> str:
    rows = [
        (
            "| stage | device | preset | batch (rows / tokens) | steps | MFU (steady) "
            "| data-wait share (steady) | tokens/s (steady) | MFU / data wait per window | wall s |"
        ),
        "|---" * 10 + "|",
    ]
    for stage in STAGES:
        path = out / f"{stage}.json"
        if not path.exists():
            rows.append(f"| {stage} | not run or failed: see {stage}.log | | | | | | | | |")
            continue
        r = json.loads(path.read_text())
        s = r["steady"]
        windows = ", ".join(
            f"{fmt(h.get('mfu'))} / {fmt(h.get('data_wait_frac'), '.2f')}" for h in r["history"]
        )
        rows.append(
            f"| {stage} | {r['device']} | {r['preset']} | {r['batch_rows']} / {r['batch_tokens']} | "
            f"{r['steps']} | {fmt(s['mfu'])} | {fmt(s['data_wait_frac'], '.2f')} | "
            f"{fmt(s['tokens_per_s'], '.0f')} | {windows} | {r['wall_s']} |"
        )
    text = (
        "# GPU check: stage 1 / stage 2 under Ray Train + DeepSpeed, one worker\n\n"
        + "\n".join(rows)
        + "\n\n"
        "MFU = 6 x all parameters x tokens/s / dense bf16 peak (medlm.train.core); it counts the frozen "
        "speech encoder in stage 1 (never run there) and not the KD teacher pass nor the encoder's forward "
        "in stage 2. Data-wait share = time in next(batches) + the copy to the GPU / window wall time. "
        "Steady = the log windows after the first.\n"
    )
    (out / "gpu_check.md").write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=list(STAGES))
    p.add_argument(
        "--data", default="runs/gpu_check/data", help="shards from `bash bench/gpu_check.sh prepare`"
    )
    p.add_argument("--out", default=os.environ.get("OUT", "runs/gpu_check/out"))
    p.add_argument("--workdir", default="/tmp/gpu_check", help="checkpoints and exports (local disk)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny preset: check the plumbing without a GPU")
    p.add_argument("--summary", action="store_true", help="write $OUT/gpu_check.md from the stages' JSON")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.summary:
        print(summarize(Path(args.out)))
    elif args.stage:
        run_stage(args)
    else:
        p.error("--stage or --summary")


if __name__ == "__main__":
    main()
