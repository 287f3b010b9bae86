"""The demo's code path (`python -m recipes.demo`) end to end on the tiny preset (the real preset is the same
code with the real checkpoints and more steps; its run is recorded in BENCHMARKS.md)."""

import pytest


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_tiny_end_to_end(capsys):
    from medlm.models.pretrained import is_fetched
    from recipes.demo import run_demo

    summary = run_demo(preset="tiny")
    out = capsys.readouterr().out
    assert summary["stage1"]["loss"] is not None and summary["stage2"]["loss"] is not None
    q = summary["question"]
    names = set(q["answers"])
    assert {"spoken (end to end)", "text (the question typed)"} <= names
    assert ("cascade (whisper-tiny.en -> same LLM)" in names) == is_fetched("whisper-tiny.en")
    assert all(isinstance(a["answer"], str) for a in q["answers"].values())
    assert summary["spoken_reply"]["seconds"] > 0  # the end-to-end answer, also spoken
    assert "never used in training" in out and list(summary["seconds"]) and len(summary["seconds"]) == 5
