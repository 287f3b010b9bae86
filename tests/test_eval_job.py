"""The evaluate job: report building (fast, hand-made predictions) and the full Ray Data run (slow)."""

import json

import numpy as np
import pytest

from medlm import storage
from medlm.data import kb
from medlm.data.registry import DatasetEntry, DataSpec
from medlm.eval import metrics as M
from medlm.eval.job import EvalConfig, build_report, evaluate, render_markdown, render_plots


def _pred(dataset, task, ref, hyp, kind="utterance", error=""):
    return {
        "dataset": dataset,
        "kind": kind,
        "task": task,
        "id": f"{dataset}-{ref[:8]}",
        "reference": ref,
        "prediction": hyp,
        "error": error,
        "seconds": 0.5,
    }


def test_report_from_handmade_predictions(tmp_path):
    cfg = EvalConfig(
        model="m",
        baseline_model="b",
        output=str(tmp_path),
        tasks=["asr", "ner", "sentiment", "slue", "qa", "retention"],
        data=DataSpec(
            root=str(tmp_path),
            datasets=[
                DatasetEntry(name=n)
                for n in ("utterances_asr", "utterances_ner", "utterances_sentiment", "qa_text")
            ],
        ),
    )
    datasets = cfg.data.resolved()
    preds = [
        _pred("utterances_asr", "asr", "I have a fever.", "i have fever"),  # 1 deletion / 4 words
        _pred("utterances_asr", "asr", "bad", "", error="corrupt_audio"),  # excluded, counted as error
        _pred(
            "utterances_ner", "ner", "SYMPTOM: fever\nDURATION: two days", "SYMPTOM: fever"
        ),  # tp 1, P 1, R 1/2
        _pred("utterances_sentiment", "sentiment", "negative", "Negative."),
        _pred("utterances_sentiment", "sentiment", "positive", "no idea"),  # invalid
        _pred(
            "qa_text",
            "chat",
            "Gout is treated with colchicine.",
            "gout is treated with colchicine",
            kind="text_dialogue",
        ),
    ]
    baseline = [
        _pred("qa_text", "chat", "Gout is treated with colchicine.", "colchicine", kind="text_dialogue")
    ]
    report = build_report(cfg, datasets, preds, baseline)
    d = report["datasets"]
    assert d["utterances_asr"]["n"] == 1 and d["utterances_asr"]["errors"] == 1
    assert d["utterances_asr"]["metrics"]["wer"] == pytest.approx(0.25)
    assert d["utterances_ner"]["metrics"]["f1"] == pytest.approx(2 / 3)  # P 1, R 1/2
    # negative: tp 1 -> F1 1; positive: 1 miss, never predicted -> F1 0; neutral absent -> left out: 0.5
    assert d["utterances_sentiment"]["metrics"]["macro_f1"] == pytest.approx(0.5)
    assert d["utterances_sentiment"]["metrics"]["invalid"] == pytest.approx(0.5)
    assert d["qa_text"]["metrics"] == {"exact_match": 1.0, "f1": 1.0}
    # SLUE: 100 * ((1 - 0.25) + 2/3 + 0.5) / 3
    assert report["slue"]["score"] == pytest.approx(100 * (0.75 + 2 / 3 + 0.5) / 3)
    # retention: before = token F1("colchicine" vs 5-token answer) = 2 * (1 * 1/5) / (1 + 1/5) = 1/3, after 1
    r = report["retention"]["qa_text"]
    assert r["before"] == pytest.approx(1 / 3) and r["after"] == 1.0 and r["ratio"] == pytest.approx(3.0)
    md = render_markdown(report)
    assert (
        "| utterances_asr | asr | 1 | 1 | wer | 0.2500 |" in md
        and "## SLUE" in md
        and "## Text retention" in md
    )
    plots = render_plots(report)
    assert set(plots) == {"metrics.png", "retention.png"}
    assert all(p.startswith(b"\x89PNG") for p in plots.values())
    json.dumps(report)  # JSON-ready


def test_config_rejects_unknown_condition_and_task():
    with pytest.raises(ValueError):
        EvalConfig(consultation={"conditions": ["scurvy"]})
    with pytest.raises(ValueError):
        EvalConfig(tasks=["bleu"])


# --- full run ----------------------------------------------------------------------------------------------


def _tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _utterances() -> list[dict]:
    from medlm.data.schema import encode_flac

    texts = [
        ("I have had fever for two days.", [("fever", "SYMPTOM"), ("two days", "DURATION")], "negative"),
        (
            "I started taking metformin for the tiredness.",
            [("metformin", "DRUG"), ("tiredness", "SYMPTOM")],
            "neutral",
        ),
        ("My ear has been bothering me. Thanks, I feel relieved.", [("ear", "BODY_PART")], "positive"),
    ]
    rows = []
    for i, (text, ents, sentiment) in enumerate(texts):
        spans = [{"start": text.index(s), "end": text.index(s) + len(s), "label": lab} for s, lab in ents]
        audio = encode_flac(_tone(1.0 + 0.5 * i, 200 + 50 * i), 16000)
        rows.append(
            {
                "id": f"utt-{i}",
                "source": "test",
                "audio": audio,
                "sample_rate": 16000,
                "transcript": text,
                "entities": spans,
                "sentiment": sentiment,
                "speaker": "{}",
                "meta": "{}",
            }
        )
    return rows


def _qa_text() -> list[dict]:
    return [
        {
            "id": f"qa_text-{q['fact_id']}",
            "source": "kb",
            "turns": [{"role": "user", "text": q["question"]}, {"role": "assistant", "text": q["answer"]}],
            "meta": json.dumps({"fact_id": q["fact_id"]}),
        }
        for q in kb.qa_pairs()[:3]
    ]


def _export(uri: str, seed: int) -> None:
    import tempfile

    import torch

    from medlm.models import ModelSpec, build_model

    torch.manual_seed(seed)
    model, processor = build_model(ModelSpec(preset="tiny"))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        storage.copy_tree(tmp, uri)


def test_model_predictor_without_ray(tmp_path):
    """The Ray Data UDFs called directly: shard plan (with a row limit) -> envelopes ->
    the actor's predictions."""
    import pyarrow as pa

    from medlm.data.io import write_rows
    from medlm.eval.job import CONSULTATION, ModelPredictor, consultation_items, read_shards, shard_plan

    write_rows(_utterances(), str(tmp_path / "data" / "utterances"), "utterance")
    _export(str(tmp_path / "model"), seed=0)
    cfg = EvalConfig(
        model=str(tmp_path / "model"),
        limit=2,
        consultation={"conditions": ["gout"], "max_turns": 2},
        data=DataSpec(root=str(tmp_path / "data"), datasets=[DatasetEntry(name="utterances_ner")]),
    )
    items = shard_plan(cfg.data.resolved(), cfg.limit) + consultation_items(cfg)
    assert [(i["dataset"], i["rows"]) for i in items] == [("utterances_ner", 2), (CONSULTATION, None)]
    envelopes = pa.concat_tables([t for item in items for t in read_shards(pa.Table.from_pylist([item]))])
    assert envelopes.column("id").to_pylist() == ["utt-0", "utt-1", "gout"]
    predictor = ModelPredictor(cfg.model, max_new_tokens=4, consultation=cfg.consultation.model_dump())
    out = predictor(envelopes).to_pylist()
    assert [r["error"] for r in out] == ["", "", ""]
    assert out[0]["reference"] == "SYMPTOM: fever\nDURATION: two days"  # the NER answer format of the data
    assert all(isinstance(r["prediction"], str) for r in out)
    consult = json.loads(out[2]["prediction"])
    assert consult["condition"] == "gout" and 1 <= consult["turns"] <= 2


@pytest.mark.slow
def test_evaluate_end_to_end(stack):
    from medlm.data.io import write_rows

    root = f"{stack.root}/eval-test"
    write_rows(_utterances(), f"{root}/data/utterances", "utterance")
    write_rows(_qa_text(), f"{root}/data/qa_text", "text_dialogue")
    _export(f"{root}/model", seed=0)
    _export(f"{root}/baseline", seed=1)
    cfg = EvalConfig(
        model=f"{root}/model",
        baseline_model=f"{root}/baseline",
        output=f"{root}/report",
        data=DataSpec(
            root=f"{root}/data",
            datasets=[
                DatasetEntry(name=n)
                for n in ("utterances_asr", "utterances_ner", "utterances_sentiment", "qa_text")
            ],
        ),
        batch_size=2,
        num_actors=1,
        max_new_tokens=6,
        consultation={"conditions": ["gout", "asthma"], "max_turns": 2},
    )
    report = evaluate(cfg)

    for name in (
        "report.json",
        "report.md",
        "metrics.png",
        "consultation.png",
        "retention.png",
        "predictions.jsonl",
    ):
        assert storage.exists(f"{root}/report/{name}"), name
    saved = json.loads(storage.read_text(f"{root}/report/report.json"))
    d = saved["datasets"]
    assert {k: d[k]["n"] for k in d} == {
        "utterances_asr": 3,
        "utterances_ner": 3,
        "utterances_sentiment": 3,
        "qa_text": 3,
    }
    assert d["utterances_asr"]["metrics"]["wer"] >= 0 and d["utterances_asr"]["metrics"]["cer"] >= 0
    for key in ("f1", "precision", "recall", "label_f1"):
        assert 0 <= d["utterances_ner"]["metrics"][key] <= 1
    for key in ("macro_f1", "accuracy", "invalid"):
        v = d["utterances_sentiment"]["metrics"][key]
        assert v is None or 0 <= v <= 1  # macro F1 is undefined (null) only if no class occurs at all
    assert 0 <= d["qa_text"]["metrics"]["exact_match"] <= d["qa_text"]["metrics"]["f1"] <= 1
    assert saved["slue"]["score"] <= 100
    assert set(saved["retention"]["qa_text"]) >= {"before", "after", "delta", "ratio"}
    c = saved["consultation"]
    assert c["n"] == 2 and 0 <= c["diagnosis_rate"] <= 1 and 1 <= c["mean_turns"] <= 2
    assert "| utterances_asr | asr | 3 | 0 | wer |" in storage.read_text(f"{root}/report/report.md")

    # the report's numbers are the metrics of the predictions it wrote
    preds = [json.loads(line) for line in storage.read_text(f"{root}/report/predictions.jsonl").splitlines()]
    asr = [p for p in preds if p["dataset"] == "utterances_asr"]
    assert sorted(p["reference"] for p in asr) == sorted(r["transcript"] for r in _utterances())
    assert report["datasets"]["utterances_asr"]["metrics"]["wer"] == pytest.approx(
        M.wer([p["reference"] for p in asr], [p["prediction"] for p in asr])
    )
    ner_refs = {p["reference"] for p in preds if p["dataset"] == "utterances_ner"}
    assert "SYMPTOM: fever\nDURATION: two days" in ner_refs


def _spoken_qa() -> list[dict]:
    from medlm.data.schema import encode_flac

    rows = []
    for i, q in enumerate(kb.qa_pairs()[:3]):
        audio = encode_flac(_tone(1.0 + 0.3 * i, 250 + 40 * i), 16000)
        rows.append(
            {
                "id": f"qa_speech-{q['fact_id']}",
                "source": "kb",
                "turns": [
                    {"role": "user", "audio": audio, "sample_rate": 16000, "transcript": q["question"]},
                    {"role": "assistant", "text": q["answer"]},
                ],
                "meta": json.dumps({"fact_id": q["fact_id"], "condition": q["condition"]}),
            }
        )
    return rows


def test_consistency_views_and_their_scores(tmp_path):
    """Spoken chat rows: the same model answers the audio, the transcript and (with an ASR) whisper's words;
    the report's consistency numbers are the metrics of exactly those answers."""
    import pyarrow as pa

    from medlm.data.io import write_rows
    from medlm.eval.job import ModelPredictor, build_report, read_shards, shard_plan
    from medlm.models.pretrained import is_fetched

    write_rows(_spoken_qa(), str(tmp_path / "data" / "qa_speech"), "speech_dialogue")
    _export(str(tmp_path / "model"), seed=0)
    cfg = EvalConfig(
        model=str(tmp_path / "model"),
        tasks=["qa", "consistency"],
        data=DataSpec(root=str(tmp_path / "data"), datasets=[DatasetEntry(name="qa_speech")]),
    )
    envelopes = pa.concat_tables(
        [t for item in shard_plan(cfg.data.resolved()) for t in read_shards(pa.Table.from_pylist([item]))]
    )
    asr = "whisper-tiny.en" if is_fetched("whisper-tiny.en") else ""
    preds = ModelPredictor(cfg.model, max_new_tokens=6, consistency=True, consistency_asr=asr or None)(
        envelopes
    ).to_pylist()
    views = [json.loads(p["views"]) for p in preds]
    assert [v["topic"] for v in views] == [kb.condition(q["condition"]).name for q in kb.qa_pairs()[:3]]
    assert all(isinstance(v["text"], str) and ("cascade" in v) == bool(asr) for v in views)
    report = build_report(cfg, cfg.data.resolved(), preds)
    c = report["consistency"]["qa_speech"]
    expected = M.consistency_scores(
        [v["text"] for v in views], [p["prediction"] for p in preds], [v["topic"] for v in views]
    )
    keys = [kb.fact_key(q["fact_id"]) for q in kb.qa_pairs()[:3]]  # the facts the rows ask about
    assert [p["fact_id"] for p in preds] == [q["fact_id"] for q in kb.qa_pairs()[:3]]
    assert c["n"] == 3 and c["speech"] == {
        **expected,
        "fact_accuracy": M.fact_accuracy(keys, [p["prediction"] for p in preds]),
    }
    assert c["text"]["fact_accuracy"] == M.fact_accuracy(keys, [v["text"] for v in views])
    if asr:  # tones are not speech: whisper hears (almost) nothing of the questions
        assert c["cascade"]["asr_wer"] > 0.5
    from medlm.eval.job import render_markdown

    assert "Does speech work?" in render_markdown(report)
