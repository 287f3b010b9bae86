"""Training throughput: a plain PyTorch loop vs Ray Train + DeepSpeed over the same SpeechLM, same run.

    python bench/train_throughput.py --preset tiny --steps 8                  # CPU (2 workers)
    python bench/train_throughput.py --preset base --gpu --steps 30 --seq 2048 --batch 4 --workers 1
    python bench/train_throughput.py --preset real --shapes stage2_adapter --seq 128 --batch 4 --peak
                                                                              # + --bf16

Shapes: ``stage1`` = text-only chat of ``--seq`` tokens (LLM + LoRA, as stage 1 trains);
``stage2`` = ``--audio`` seconds of audio + text (adapter + LoRA, encoder frozen, as stage 2).
``stage2_adapter`` = the real stage-2 recipe (adapter only; encoder and LLM frozen).
Reports tokens/s (non-pad tokens through the LLM, audio slots included) and, on GPU, estimated
MFU (6 * params * tokens/s / peak). ``--peak`` also measures this machine's matmul peak (2048^3, fp32
and bf16) and reports the share of it the loops reach, counting 4 * params FLOPs per token for a frozen
base (forward 2N + backward to the activations 2N) and 6 * params otherwise. ``--bf16``: bf16 weights
(plain loop) / DeepSpeed bf16 (Ray loop), on CPUs too. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medlm.audio import SAMPLING_RATE
from medlm.models import ModelSpec, build_model  # noqa: E402
from medlm.train.config import OptimSpec  # noqa: E402
from medlm.train.core import deepspeed_config, peak_flops  # noqa: E402

SHAPES = {
    "stage1": {"trainable": ["lora_"], "audio": False},
    "stage2": {"trainable": [r"^adapter\.", "lora_"], "audio": True},
    "stage2_adapter": {"trainable": [r"^adapter\."], "audio": True},
}


def make_batch(processor, shape: str, seq: int, batch: int, audio_s: float, seed: int = 0) -> dict:
    """``batch`` copies of one synthetic example of about ``seq`` tokens (same for both loops)."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(200)]
    text = " ".join(rng.choice(words, size=seq))
    user: list = [{"type": "text", "text": "Question?"}]
    if SHAPES[shape]["audio"]:
        user = [
            {
                "type": "audio",
                "audio": (0.1 * rng.standard_normal(int(SAMPLING_RATE * audio_s))).astype(np.float32),
                "sampling_rate": SAMPLING_RATE,
            }
        ]
    ex = processor.featurize([{"role": "user", "content": user}, {"role": "assistant", "content": text}])
    ex = {k: v for k, v in ex.items() if not k.startswith("teacher_")}
    b = processor.collate([ex] * batch)
    keep = int(b["attention_mask"][0].sum())
    if keep > seq:  # cut to the requested length (labels too)
        for k in ("input_ids", "attention_mask", "labels"):
            b[k] = b[k][:, :seq]
    return b


def spec_for(args, shape: str) -> ModelSpec:
    lora = 16 if any("lora" in t for t in SHAPES[shape]["trainable"]) else 0
    return ModelSpec(
        preset=args.preset,
        lora_r=lora,
        lora_alpha=32,
        trainable=SHAPES[shape]["trainable"],
        dtype="bfloat16" if (args.gpu or args.bf16) else "float32",
    )


def plain_loop(args, shape: str) -> dict:
    device = "cuda" if args.gpu else "cpu"
    torch.manual_seed(0)
    model, processor = build_model(spec_for(args, shape))
    model.to(device).train()
    batch = {
        k: v.to(device) for k, v in make_batch(processor, shape, args.seq, args.batch, args.audio).items()
    }
    if (args.gpu or args.bf16) and "input_features" in batch:
        batch["input_features"] = batch["input_features"].to(torch.bfloat16)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens = int(batch["attention_mask"].sum())
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            if args.gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if args.gpu:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    del model, opt
    if args.gpu:
        torch.cuda.empty_cache()
    return {"tokens_per_s": tokens * args.steps / dt, "params": n_params, "step_s": dt / args.steps}


def _ray_worker(config: dict) -> None:
    import deepspeed
    import ray.train

    args = argparse.Namespace(**config["args"])
    shape = config["shape"]
    torch.manual_seed(0)
    model, processor = build_model(spec_for(args, shape))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    o = OptimSpec(zero_stage=args.zero, bf16=args.gpu or args.bf16)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=deepspeed_config(o, args.batch))
    batch = {
        k: v.to(engine.device)
        for k, v in make_batch(processor, shape, args.seq, args.batch, args.audio).items()
    }
    if (args.gpu or args.bf16) and "input_features" in batch:
        batch["input_features"] = batch["input_features"].to(torch.bfloat16)
    tokens = int(batch["attention_mask"].sum())
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            if args.gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
    if args.gpu:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    ctx = ray.train.get_context()
    if ctx.get_world_rank() == 0:  # Train V2 drops metrics without a checkpoint: write a file
        Path(config["out"]).write_text(
            json.dumps(
                {"tokens_per_s": tokens * args.steps * ctx.get_world_size() / dt, "step_s": dt / args.steps}
            )
        )
    ray.train.report({"done": 1})


def ray_loop(args, shape: str) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(tempfile.mkdtemp()) / "result.json"
    TorchTrainer(
        _ray_worker,
        train_loop_config={"args": vars(args), "shape": shape, "out": str(out)},
        scaling_config=ScalingConfig(
            num_workers=args.workers, use_gpu=args.gpu, resources_per_worker={"CPU": 1 if args.gpu else 0.5}
        ),
        run_config=RunConfig(storage_path=tempfile.mkdtemp(), name=f"bench-{shape}"),
    ).fit()
    return json.loads(out.read_text())


def matmul_peak(dtype, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of the best of ``reps`` n^3 matmuls in ``dtype`` with all of torch's threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES))
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--audio", type=float, default=8.0, help="seconds of audio per example (stage2)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--zero", type=int, default=2)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bf16 on CPU too")
    p.add_argument("--peak", action="store_true", help="measure the matmul peak and report the share reached")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    os.environ.setdefault("DS_ACCELERATOR", "cuda" if args.gpu else "cpu")
    from medlm.stack import init_ray

    init_ray(num_cpus=None)
    device = torch.cuda.get_device_name() if args.gpu else f"CPU ({os.cpu_count()} cores)"
    peak = peak_flops(device) if args.gpu else None
    if args.peak and not args.gpu:
        peak = matmul_peak(torch.bfloat16 if args.bf16 else torch.float32)
        print(
            f"measured matmul peak ({'bf16' if args.bf16 else 'fp32'}, 2048^3, "
            f"{torch.get_num_threads()} threads): {peak / 1e9:.0f} GFLOP/s"
        )
    rows = []
    for shape in args.shapes:
        plain = plain_loop(args, shape)
        dist = ray_loop(args, shape)
        row = {
            "shape": shape,
            "preset": args.preset,
            "params": plain["params"],
            "plain_tok_s": plain["tokens_per_s"],
            "ray_ds_tok_s": dist["tokens_per_s"],
            "workers": args.workers,
            "zero": args.zero,
        }
        if peak:
            per_token = (6 if any(t.startswith("^llm") for t in SHAPES[shape]["trainable"]) else 4) * plain[
                "params"
            ]
            row["plain_share_of_peak"] = per_token * plain["tokens_per_s"] / peak
            # on a GPU each worker has its own device; on CPU the workers share the machine's measured peak
            row["ray_ds_share_of_peak"] = (
                per_token * dist["tokens_per_s"] / (peak * (args.workers if args.gpu else 1))
            )
        rows.append(row)
    print(
        f"\ndevice: {device}; seq {args.seq}, batch {args.batch}/worker, "
        f"audio {args.audio}s, steps {args.steps}\n"
    )
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
