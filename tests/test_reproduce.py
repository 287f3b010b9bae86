"""``medlm reproduce`` end to end on one cheap reproduction (SpeechLLM, 3 steps per run, 1 worker)."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_speechllm_reproduction_writes_table_and_json(stack, tmp_path):
    from medlm.eval.reproduce import run_reproductions

    summary = run_reproductions("tiny", only=["speechllm"], output=str(tmp_path),
                                overrides=["steps=3", "max_new_tokens=8", "eval_limit=8"])
    assert set(summary["checks"]) == {"speechllm"}
    table = (tmp_path / "speechllm.md").read_text()
    assert "| classifier regularizer + LoRA |" in table and "medlm reproduce --preset tiny" in table
    results = json.loads((tmp_path / "reproductions-tiny.json").read_text())
    rows = results["reproductions"]["speechllm"]["rows"]
    assert [r["variant"] for r in rows] == ["classifier regularizer + LoRA", "LoRA, no classifier",
                                            "classifier, no LoRA"]
    for r in rows:
        for k in ("NER F1", "sentiment macro F1", "WER"):
            assert isinstance(r[k], float) and r[k] >= 0, (k, r)
        assert r["n"] == 8


def test_update_readme_replaces_only_the_marked_section(tmp_path):
    from medlm.eval.reproduce import README_END, README_START, update_readme

    out = tmp_path / "repro"
    out.mkdir()
    (out / "speechllm.md").write_text("# SpeechLLM\n\n| a |\n|---|\n| 1 |\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold table\n{README_END}\nafter\n")
    update_readme(readme, out)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "old table" not in text
    assert "### SpeechLLM" in text and "| 1 |" in text
    update_readme(readme, out)
    assert readme.read_text() == text  # idempotent
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- reproductions:start -->"):
        update_readme(tmp_path / "plain.md", out)
