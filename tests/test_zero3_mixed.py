"""ZeRO-3 with 2 CPU ranks (gloo) where one rank draws a text-only batch and the other a spoken one.

ZeRO-3 gathers parameters per module call, forward and backward, and reduce-scatters every trainable
gradient: if the two ranks ran different modules the collectives would mismatch (a gloo abort or a
hang). ``SpeechLM.forward`` keeps the module sequence identical; this runs it for real.
"""

import os
import socket

import numpy as np
import pytest

from medlm.audio import SAMPLING_RATE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _noise(seconds, seed):
    return (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLING_RATE)) * 0.1).astype(
        np.float32
    )


def _rank(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        DS_ACCELERATOR="cpu",
    )
    import deepspeed
    import torch
    import torch.distributed as dist

    from medlm.models import ModelSpec, build_model
    from medlm.train.config import OptimSpec
    from medlm.train.core import deepspeed_config

    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model, proc = build_model(
        ModelSpec(
            preset="tiny",
            lora_r=8,
            encoder_lora_r=2,
            num_classes=3,
            kd_weight=0.5,
            trainable=[r"^adapter\.", r"^classifier\.", "lora_"],
        )
    )
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.AdamW(params, lr=1e-3),
        config=deepspeed_config(OptimSpec(zero_stage=3), 1),
    )
    text = [
        {"role": "user", "content": "Text only question."},
        {"role": "assistant", "content": "Text answer."},
    ]
    spoken = [
        {
            "role": "user",
            "content": [
                {
                    "type": "audio",
                    "audio": _noise(1.0, 1),
                    "sampling_rate": SAMPLING_RATE,
                    "transcript": "It hurts here.",
                }
            ],
        },
        {"role": "assistant", "content": "Where exactly?"},
    ]
    losses = []
    for step in range(3):
        conv = text if (rank + step) % 2 == 0 else spoken  # the ranks always disagree
        # lockstep as the training core passes it when world > 1 (SpeechLM.forward)
        out = engine(**proc.collate([proc.featurize(conv, class_label=1)]), lockstep=world > 1)
        engine.backward(out.loss)
        engine.step()
        losses.append(float(out.loss))
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(" ".join(map(str, losses)))
    dist.destroy_process_group()


def test_zero3_ranks_with_text_and_spoken_batches_stay_in_step(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(tmp_path)), nprocs=2)
    for rank in range(2):
        losses = [float(x) for x in (tmp_path / f"rank{rank}.txt").read_text().split()]
        assert len(losses) == 3 and all(np.isfinite(losses))
