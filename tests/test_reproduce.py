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
