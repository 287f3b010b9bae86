"""``python -m recipes.reproduce run``: every reproduction end to end at tiny sizes, and the README
section it writes."""

import json

import pytest

# The real preset's code paths (invented knowledge, the CTC-aligned start, the real-preset job configs) on the
# tiny models and a few rows of data; the CT reproduction on its tiny config.
TINY_REAL = [
    "model=tiny",
    "steps=2",
    "job_steps={}",
    "num_workers=1",
    "max_new_tokens=6",
    "eval_limit=4",
    "data=[knowledge=invented, qa_forms=2, consultations=8, speech_consultations=4, utterances=8, "
    "sentences=8, 'tts.backend=espeak']",
    "ct_config=ct_clip",
    "ct=[data.synthetic_cases=32, teacher.steps=4, align.steps=4, distill.steps=4, "
    "teacher.batch_size=8, align.batch_size=8, distill.batch_size=8]",
]


def _report(workdir, name):
    return json.loads((workdir / "eval" / name / "report.json").read_text())


@pytest.mark.slow
def test_every_reproduction_writes_its_table_from_the_measured_numbers(stack, tmp_path):
    from recipes.reproduce import NAMES, run_reproductions
    from recipes.tables import fmt

    out, workdir = tmp_path / "out", tmp_path / "work"
    summary = run_reproductions("real", output=str(out), overrides=TINY_REAL, workdir=str(workdir))
    assert set(summary["checks"]) == set(NAMES)
    results = json.loads((out / "reproductions-real.json").read_text())["reproductions"]
    tables = {n: (out / f"{n}.md").read_text() for n in NAMES}
    for n, res in results.items():  # every number of every row is in the table as written
        for row in res["rows"]:
            line = next(x for x in tables[n].splitlines() if x.startswith(f"| {row['variant']} |"))
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert all(fmt(v) in cells for v in row.values()), (n, row, line)
        assert (
            "python -m recipes.reproduce run --preset real" in tables[n]
            and f"--workdir {workdir}" in tables[n]
        )

    sma = {r["variant"].split(":")[0]: r for r in results["speechmedassist"]["rows"]}
    two = _report(workdir, "sma-two-stage")["consistency"]["qa_speech_heldout"]
    assert sma["two-stage"]["spoken questions: fact accuracy"] == two["speech"]["fact_accuracy"]
    assert sma["two-stage"]["same questions in text: fact accuracy"] == two["text"]["fact_accuracy"]
    assert sma["cascade"]["spoken questions: fact accuracy"] == two["cascade"]["fact_accuracy"]
    one = _report(workdir, "sma-one-stage")["consistency"]["qa_speech_heldout"]["speech"]["fact_accuracy"]
    assert results["speechmedassist"]["check"]["two-stage > one-stage on spoken fact accuracy"] == (
        two["speech"]["fact_accuracy"] > one
    )

    vtb = results["voicetextblender"]["rows"]
    assert [r["variant"] for r in vtb] == [
        "before SFT (the two-stage model)",
        "joint speech+text SFT",
        "speech-only SFT",
    ]
    assert (
        vtb[1]["text fact accuracy (injected facts)"]
        == _report(workdir, "vtb-joint")["datasets"]["qa_text"]["metrics"]["fact_accuracy"]
    )
    assert vtb[0]["text score change (relative)"] == 0.0

    slm = results["speechllm"]["rows"]
    full = _report(workdir, "slm-full")
    assert slm[0]["NER F1"] == full["datasets"]["utterances_ner"]["metrics"]["f1"]
    assert slm[-1]["WER"] == full["cascade"]["datasets"]["utterances_asr"]["metrics"]["wer"]
    assert slm[-1]["variant"].startswith("whisper-tiny.en") and slm[0]["n"] == 4

    ct = json.loads((workdir / "ct_clip" / "results.json").read_text())
    assert results["speechct"]["rows"][2]["zero-shot F1"] == ct["zero_shot"]["speech_kd"]["f1"]

    # a rerun on the same workdir reuses every run and evaluation: the same numbers, no training
    again = run_reproductions(
        "real", only=["speechmedassist"], output=str(out), overrides=TINY_REAL, workdir=str(workdir)
    )
    rerun = json.loads((out / "reproductions-real.json").read_text())["reproductions"]["speechmedassist"]
    assert (
        rerun["rows"] == results["speechmedassist"]["rows"]
        and again["wall_s"] < results["speechmedassist"]["wall_s"]
    )

    # two seeds (the cheapest claim): the preset's seed on the workdir, seed 1 beside it; mean and both values
    run_reproductions(
        "real", only=["speechct"], output=str(out), overrides=TINY_REAL, workdir=str(workdir), seeds=2
    )
    ct2 = json.loads((out / "reproductions-real.json").read_text())["reproductions"]["speechct"]
    seed1 = json.loads((workdir / "seed-1" / "ct_clip" / "results.json").read_text())
    f1s = [res["rows"][2]["zero-shot F1"] for res in ct2["per_seed"]]
    assert [res["seed"] for res in ct2["per_seed"]] == [0, 1] and f1s[1] == seed1["zero_shot"]["speech_kd"][
        "f1"
    ]
    assert ct2["rows"][2]["zero-shot F1"] == (f1s[0] if f1s[0] == f1s[1] else sum(f1s) / 2)
    assert f"({fmt(f1s[0])} / {fmt(f1s[1])})" in (out / "speechct.md").read_text()


def test_update_readme_replaces_only_the_marked_section(tmp_path):
    from recipes.tables import README_END, README_START, update_readme

    out = tmp_path / "repro"
    out.mkdir()
    (out / "speechllm.md").write_text("# SpeechLLM\n\n| a |\n|---|\n| 1 |\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold table\n{README_END}\nafter\n")
    update_readme(readme, out, ["speechllm"])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "old table" not in text
    assert "### SpeechLLM" in text and "| 1 |" in text
    update_readme(readme, out, ["speechllm"])
    assert readme.read_text() == text  # idempotent
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- reproductions:start -->"):
        update_readme(tmp_path / "plain.md", out, ["speechllm"])


class _NoCascadeRunner:
    """A Runner's interface with fixed metrics and no cascade (the model store lacks whisper-tiny.en)."""

    data_root, heldout_root = "/data", "/data-heldout"

    def aligned(self):
        return []

    def train(self, name, job, *overrides):
        return {"export": f"/runs/{name}", "wall_s": 1.0}

    def evaluate(self, name, model, datasets, tasks, cascade=False):
        f1 = {"slm-full": 0.5, "slm-no-classifier": 0.4, "slm-no-lora": 0.3}[name]
        return {
            "utterances_ner": {"f1": f1, "label_f1": f1, "n": 4},
            "utterances_sentiment": {"macro_f1": f1},
            "utterances_asr": {"wer": 0.9, "distinct": 1.0},
        }

    def job(self, job):
        return job


def test_speechllm_table_without_the_cascade_has_no_anchor_row():
    """Without whisper-tiny.en there is no WER anchor: the table says n/a (this was a NameError)."""
    from recipes.reproduce import speechllm

    res = speechllm(_NoCascadeRunner())
    assert [r["variant"].split(",")[0] for r in res["rows"]] == [
        "classifier regularizer (sentiment + entity types) + LoRA",
        "LoRA",
        "classifier",
    ]
    wer_check = [v for k, v in res["check"].items() if k.startswith("full: WER")]
    assert wer_check == [None] and all(v is True for k, v in res["check"].items() if k.startswith("full >"))


def test_several_seeds_give_the_mean_every_seeds_value_and_checks_that_hold_on_all():
    """`--seeds N`: a row's numbers are the mean over the seeds with every seed's value in the table; a
    check holds only where it holds on every seed; a variant one seed lacks has no mean."""
    from recipes.reproduce import combine_seeds
    from recipes.tables import render_markdown

    def result(seed, f1, holds, extra=True):
        rows = [{"variant": "teacher", "F1": f1, "n": 38}, {"variant": "student", "F1": f1 / 2, "n": 38}]
        return {
            "title": "T",
            "claim": "C",
            "rows": rows + ([{"variant": "cascade", "F1": 0.5, "n": 38}] if extra else []),
            "check": {"KD helps": holds, "teacher ok": True, "unknown": None if seed else True},
            "notes": "N.",
            "preset": "real",
            "preset_config": "model real",
            "seed": seed,
            "wall_s": 10.0,
            "reused": ["align"] if seed == 0 else [],
            "finished": "now",
            "command": "python -m recipes.reproduce run --seeds 2",
        }

    both = combine_seeds([result(0, 0.6, True), result(1, 0.8, False, extra=False)])
    rows = {r["variant"]: r for r in both["rows"]}
    assert abs(rows["teacher"]["F1"] - 0.7) < 1e-9 and rows["teacher"]["n"] == 38
    assert rows["cascade"]["F1"] is None  # seed 1 has no such row
    assert both["check"] == {"KD helps": False, "teacher ok": True, "unknown": None}
    assert both["seed"] == "0, 1" and both["wall_s"] == 20.0 and both["reused"] == ["seed 0: align"]
    assert len(both["per_seed"]) == 2
    table = render_markdown("x", both)
    assert "| teacher | 0.700 (0.600 / 0.800) | 38 (38 / 38) |" in table
    assert "| KD helps | no |" in table and "seeds 0, 1;" in table and "Seeds 0, 1" in table
    one = render_markdown("x", result(0, 0.6, True))
    assert "| teacher | 0.600 | 38 |" in one and "seed 0;" in one
