"""The four training jobs on tiny presets: Ray Train with 2 CPU workers + DeepSpeed ZeRO-2/3.

One uninterrupted stage-1 run is the reference for the fault test: a second run with the same seed,
whose last rank is killed after step 3, must be restarted by Ray from its step-2 checkpoint and end
where the reference ended.
"""

import pytest

from medlm import storage
from medlm.config import load_config
from medlm.paths import FAULT_ENV
from medlm.train import TrainJobConfig, train
from medlm.train.config import OptimSpec
from medlm.train.core import deepspeed_config, lr_lambda

pytestmark = pytest.mark.slow

STEPS = 6


def _cfg(job, tiny_data, stack, name, *extra):
    return load_config(
        TrainJobConfig,
        f"{job}.yaml",
        [
            f"data.root={tiny_data}",
            f"run.storage_path={stack.root}/runs",
            f"run.name={name}",
            f"optim.steps={STEPS}",
            "optim.checkpoint_every=2",
            "optim.log_every=1",
            "optim.lr=1e-2",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def stage1(tiny_data, stack, scratch):
    before = scratch()
    result = train(_cfg("stage1", tiny_data, stack, "t-stage1"))
    return {**result, "scratch_left": scratch() - before}


def test_a_run_leaves_no_scratch_files(stage1):
    """Ray uploads every checkpoint and the export is copied to the run dir; their local copies must go."""
    assert stage1["scratch_left"] == set()
    tensorboard = storage.join(stage1["export"].rsplit("/", 1)[0], "tensorboard")
    assert storage.list_files(tensorboard, suffix=""), "the TensorBoard events reach the run dir"


def test_stage1_loss_falls_and_export_generates(stage1):
    from medlm.models import SpeechLM, SpeechLMProcessor

    losses = [m["loss"] for m in stage1["history"]]
    assert len(losses) == STEPS
    assert losses[-1] < losses[0] - 0.05, losses  # LoRA on a random tiny LLM learns slowly; 6 steps
    local = storage.local_copy(stage1["export"])
    model, proc = SpeechLM.from_pretrained(local), SpeechLMProcessor.from_pretrained(local)
    batch = proc.prepare_generation([[{"role": "user", "content": "What helps a migraine?"}]])
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert out.shape[-1] >= 1


def test_resume_after_worker_killed_ends_where_uninterrupted_run_ends(stage1, tiny_data, stack, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "3")
    faulty = train(_cfg("stage1", tiny_data, stack, "t-stage1-fault", "run.max_failures=1"))
    assert faulty["restarts"] == 1
    ref, got = [m["loss"] for m in stage1["history"]], [m["loss"] for m in faulty["history"]]
    # Steps 1-2 come from the first attempt, 3-6 from the resumed one (step 3 redone after the kill).
    assert got == pytest.approx(ref, rel=1e-4, abs=1e-5)
    a = _state(stage1["export"])
    b = _state(faulty["export"])
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, worst


def _state(export):
    """Every weight of an export (its shards: one per part)."""
    from pathlib import Path

    from safetensors.torch import load_file

    return {
        k: v
        for f in sorted(Path(storage.local_copy(export)).glob("model*.safetensors"))
        for k, v in load_file(str(f)).items()
    }


def test_stage2_from_stage1_export(stage1, tiny_data, stack):
    s2 = train(_cfg("stage2", tiny_data, stack, "t-stage2", f"model.init_from={stage1['export']}"))
    losses = [m["loss"] for m in s2["history"]]
    assert losses[-1] < losses[0], losses
    assert any("kd_loss" in m for m in s2["history"])


def test_joint_sft_with_zero3(tiny_data, stack):
    res = train(_cfg("joint_sft", tiny_data, stack, "t-joint"))
    losses = [m["loss"] for m in res["history"]]
    assert losses[-1] < losses[0], losses
    from medlm.models import SpeechLM

    SpeechLM.from_pretrained(storage.local_copy(res["export"]))  # consolidated from ZeRO-3 shards


def test_multitask_with_classifier_regularizer(tiny_data, stack):
    res = train(_cfg("multitask", tiny_data, stack, "t-multi"))
    hist = res["history"]
    assert hist[-1]["loss"] < hist[0]["loss"], hist
    assert all("cls_loss" in m for m in hist)


def test_deepspeed_config_and_schedule():
    o = OptimSpec(zero_stage=3, offload_optimizer=True, bf16=True, grad_accum=2, warmup_steps=2, steps=10)
    cfg = deepspeed_config(o, micro_batch=4)
    assert (
        cfg["zero_optimization"]["stage"] == 3
        and cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    )
    assert cfg["bf16"]["enabled"] and cfg["gradient_accumulation_steps"] == 2
    f = lr_lambda(o)
    assert (
        f(0) == 0.5 and f(1) == 1.0 and f(2) == pytest.approx(1.0) and f(10) == pytest.approx(o.min_lr_ratio)
    )
    assert all(f(i) >= f(i + 1) for i in range(2, 10))


@pytest.mark.parametrize(
    "config, extra, falls, absent",
    [
        ("stage2_real.yaml", [], "kd_loss", ()),  # KD from text (+ CTC kept)
        ("stage2_ctc_real.yaml", [], "ctc_loss", ("lm_loss", "kd_loss")),  # CTC alignment, no LLM forward
        # the LLM reads CTC-compressed audio. From an unaligned adapter (as here) the CTC loss falls while the
        # compressed sequence keeps changing length, and KD does not fall in 8 steps (1.71 -> 2.74, seen in
        # CI): compression is for a CTC-aligned adapter (BENCHMARKS.md, "Stage 2 on frozen work done once")
        ("stage2_real.yaml", ["model.audio_compression=ctc"], "ctc_loss", ()),
    ],
)
def test_stage2_on_the_real_preset_aligns(tiny_data, stack, config, extra, falls, absent):
    """Stage 2's real recipes (whisper-tiny.en + SmolLM2 frozen, adapter only; the encoder's frames cached)
    for a few steps under Ray Train + DeepSpeed with 2 CPU workers: the aligning loss falls; the CTC stage
    computes no LM / KD loss."""
    from medlm.models.pretrained import PARTS, is_fetched

    if not all(is_fetched(n) for n in PARTS):
        pytest.skip("model store not fetched (run `medlm models fetch`)")
    res = train(
        load_config(
            TrainJobConfig,
            config,
            [
                f"data.root={tiny_data}",
                f"run.storage_path={stack.root}/runs",
                f"run.name=t-{config.removesuffix('.yaml')}-{len(extra)}",
                "optim.steps=8",
                "optim.warmup_steps=1",
                "optim.log_every=2",
                "optim.checkpoint_every=8",
                "optim.lr=5e-3",
                "data.batch_rows=2",
                *extra,
            ],
        )
    )
    values = [m[falls] for m in res["history"]]
    assert len(values) == 4 and values[-1] < values[0], values
    assert not any(k in m for m in res["history"] for k in absent)
    assert res["workers"] == 2
