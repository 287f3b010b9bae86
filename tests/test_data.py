"""Data plane unit tests: schemas, shard I/O (local + S3), audio validation, converters, factory pieces."""

import io
import random

import numpy as np
import pytest
import soundfile as sf

from medlm.config import ConfigError, load_config
from medlm.data import kb
from medlm.data.io import iter_rows, read_table, shard_files, write_rows
from medlm.data.llm import RuleBackend, spoken_ok
from medlm.data.pipeline import decode_example, encode_example, padding_fraction, plan_batches
from medlm.data.quarantine import read_quarantine, summarize_quarantine, write_quarantine
from medlm.data.registry import DataSpec
from medlm.data.schema import (
    BadRecord,
    decode_audio,
    encode_flac,
    pack_volume,
    to_messages,
)
from medlm.models.prompts import ENTITY_LABELS, SENTIMENTS, SYSTEM_PROMPT
from medlm.models.tts import EspeakTTS, voice_bank


def tone(seconds=1.0, rate=22050, freq=220.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def utt_row(i=0, **kw):
    text = "I have had fever for two days. I feel terrible."
    row = {
        "id": f"u{i}",
        "source": "test",
        "audio": encode_flac(tone(), 22050),
        "sample_rate": 22050,
        "transcript": text,
        "entities": [
            {"start": 11, "end": 16, "label": "SYMPTOM"},
            {"start": 21, "end": 29, "label": "DURATION"},
        ],
        "sentiment": "negative",
        "speaker": "{}",
        "meta": "{}",
    }
    row.update(kw)
    return row


# --- audio validation -----------------------------------------------------------------------------


def test_decode_audio_resamples_to_16k():
    audio = decode_audio(encode_flac(tone(2.0, 22050), 22050), 22050)
    assert audio.dtype == np.float32 and abs(len(audio) - 32000) <= 2
    stereo = io.BytesIO()
    sf.write(stereo, np.stack([tone(1.0, 8000), tone(1.0, 8000)], 1), 8000, format="FLAC")
    assert abs(len(decode_audio(stereo.getvalue(), 8000)) - 16000) <= 2


@pytest.mark.parametrize(
    "data,rate,max_s,reason",
    [
        (None, 16000, None, "missing_audio"),
        (b"not audio at all" * 10, 16000, None, "corrupt_audio"),
        ("truncated", 22050, None, "truncated_audio"),
        ("silence", 22050, None, "empty_audio"),
        ("ok", 16000, None, "sample_rate_mismatch"),
        ("ok", 22050, 0.5, "audio_too_long"),
        ("ok", None, None, "missing_field"),
    ],
)
def test_decode_audio_rejects_bad_input(data, rate, max_s, reason):
    good = encode_flac(tone(), 22050)
    data = {
        "ok": good,
        "truncated": good[: len(good) // 2],
        "silence": encode_flac(np.zeros(22050, np.float32), 22050),
    }.get(data, data)
    with pytest.raises(BadRecord) as e:
        decode_audio(data, rate, max_s)
    assert e.value.reason == reason


def test_low_sample_rate_rejected():
    with pytest.raises(BadRecord, match="sample_rate_too_low"):
        decode_audio(encode_flac(tone(1.0, 4000), 4000), 4000)


# --- converters -------------------------------------------------------------------------------------


def test_utterance_tasks():
    row = utt_row()
    asr, label = to_messages(row, "utterance", "asr")
    assert asr[-1] == {"role": "assistant", "content": row["transcript"]}
    # every task of a labelled utterance carries the regularizer's targets: sentiment, then entity types
    assert label == [
        SENTIMENTS.index("negative"),
        *(int(x in ("SYMPTOM", "DURATION")) for x in ENTITY_LABELS),
    ]
    assert to_messages(utt_row(sentiment=None), "utterance", "asr")[1] is None
    audio = asr[1]["content"][0]
    assert (
        audio["type"] == "audio"
        and audio["sampling_rate"] == 16000
        and audio["transcript"] == row["transcript"]
    )
    ner, _ = to_messages(row, "utterance", "ner")
    assert ner[-1]["content"] == "SYMPTOM: fever\nDURATION: two days"
    sent, _ = to_messages(row, "utterance", "sentiment")
    assert sent[-1]["content"] == "negative"
    assert to_messages(row, "utterance", "multitask")[1] == label
    with pytest.raises(ValueError, match="does not apply"):
        to_messages(row, "utterance", "chat")


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"sentiment": "furious"}, "unknown_label"),
        ({"entities": [{"start": 0, "end": 3, "label": "ALIEN"}]}, "unknown_label"),
        ({"entities": [{"start": 5, "end": 500, "label": "SYMPTOM"}]}, "bad_span"),
        ({"transcript": None}, "missing_field"),
    ],
)
def test_utterance_bad_labels(change, reason):
    with pytest.raises(BadRecord) as e:
        to_messages(utt_row(**change), "utterance", "multitask")
    assert e.value.reason == reason


def test_dialogue_messages_mixed_modal():
    row = {
        "id": "d",
        "source": "t",
        "meta": "{}",
        "turns": [
            {
                "role": "user",
                "audio": encode_flac(tone(), 22050),
                "sample_rate": 22050,
                "transcript": "hello",
                "text": "Is this serious?",
            },
            {"role": "assistant", "text": "No."},
        ],
    }
    msgs, _ = to_messages(row, "speech_dialogue")
    assert msgs[0]["role"] == "system"
    assert [p["type"] for p in msgs[1]["content"]] == ["audio", "text"]
    bad = {**row, "turns": [{"role": "doctor", "text": "x"}]}
    with pytest.raises(BadRecord, match="unknown_label"):
        to_messages(bad, "text_dialogue")
    with pytest.raises(BadRecord, match="no assistant"):
        to_messages({**row, "turns": row["turns"][:1]}, "speech_dialogue")


def test_ct_messages():
    from medlm.data.schema import CT_RATE_CLASSES

    labels = [0] * 18
    labels[2] = 1
    row = {
        "id": "c",
        "volume": pack_volume(np.zeros((8, 8, 8), np.int16)),
        "shape": [8, 8, 8],
        "spacing": [1.5, 1.0, 1.0],
        "labels": labels,
        "report": "The heart is enlarged.",
        "report_audio": encode_flac(tone(), 22050),
        "sample_rate": 22050,
        "split": "train",
    }
    msgs, _ = to_messages(row, "ct", "spoken_report")
    assert msgs[-1]["content"] == CT_RATE_CLASSES[2]
    with pytest.raises(BadRecord, match="unknown_label"):
        to_messages({**row, "labels": [2] * 18}, "ct")


# --- shard I/O ----------------------------------------------------------------------------------------


def test_shards_roundtrip_local(tmp_path):
    rows = [utt_row(i) for i in range(25)]
    files = write_rows(rows, str(tmp_path / "utt"), "utterance", rows_per_shard=10)
    assert len(files) == 3 and shard_files(str(tmp_path / "utt")) == files
    back = list(iter_rows(str(tmp_path / "utt")))
    assert [r["id"] for r in back] == [r["id"] for r in rows]
    assert back[3]["audio"] == rows[3]["audio"] and back[3]["entities"] == rows[3]["entities"]
    with pytest.raises(ValueError, match="schema"):
        write_rows([{"id": "x", "turns": "nope"}], str(tmp_path / "bad"), "dialogue")


def test_shards_roundtrip_s3(s3):
    uri = f"{s3.root}/unit/utt"
    write_rows([utt_row(i) for i in range(5)], uri, "utterance")
    assert read_table(uri).num_rows == 5
    q = f"{s3.root}/unit/_quarantine"
    write_quarantine(q, [{"dataset": "a", "id": "x", "reason": "corrupt_audio", "detail": "", "source": ""}])
    assert summarize_quarantine(q) == {"total": 1, "by_reason": {"corrupt_audio": 1}, "by_dataset": {"a": 1}}
    assert read_quarantine(f"{s3.root}/unit/none") == []


# --- knowledge base, annotation, TTS -------------------------------------------------------------------


def test_kb_deterministic_and_quizzable():
    assert kb.qa_pairs(3) == kb.qa_pairs(3)
    facts = {f["fact_id"]: f for f in kb.facts()}
    assert len(facts) == len(kb.CONDITIONS) * len(kb.ATTRIBUTES)
    for qa in kb.qa_pairs(0):
        assert facts[qa["fact_id"]]["value"].split(",")[0] in qa["answer"]
    c = kb.CONDITIONS[0]
    assert kb.consultation(c, random.Random(1)) == kb.consultation(c, random.Random(1))
    assert any(c.drug in t["text"] for t in kb.consultation(c, random.Random(1)))


def test_invented_knowledge_is_new_and_quizzable():
    """The invented knowledge base: its drugs and tests occur in no standard fact, every fact has a key phrase
    its short answer states, and qa_text can hold every question form (distinct row ids)."""
    from medlm.data.factory import MakeDataConfig, _items, speech_conditions

    standard = " ".join(f["value"] for f in kb.facts()).lower()
    assert not any(c.drug.split()[0].lower() in standard or c.test.lower() in standard for c in kb.INVENTED)
    pairs = kb.qa_pairs(0, conditions=kb.INVENTED, forms=2)
    assert len(pairs) == 2 * len(kb.INVENTED) * len(kb.ATTRIBUTES)
    for qa in pairs:
        assert kb.fact_key(qa["fact_id"]) in qa["answer"]
        assert kb.condition(qa["condition"]).name in qa["question"]
    assert len({q["question"] for q in pairs}) == len(pairs)  # the two forms differ
    cfg = MakeDataConfig(knowledge="invented", qa_forms=2)
    rows = _items(cfg, "qa_text")
    assert len({r["row_id"] for r in rows}) == len(rows) == len(pairs)
    heard, held = _items(cfg, "qa_speech"), _items(cfg, "qa_speech_heldout")
    assert {q["condition"] for q in heard} == speech_conditions(cfg) and speech_conditions(cfg) <= {
        c.id for c in kb.INVENTED
    }
    assert not {q["condition"] for q in heard} & {q["condition"] for q in held}
    assert kb.qa_pairs(0) == kb.qa_pairs(0, conditions=kb.CONDITIONS, forms=1)  # the default is unchanged


def test_rule_backend_annotates_and_filters():
    b = RuleBackend()
    text = "I started taking metformin for the excessive thirst. I'm really worried."
    ann = b.annotate(text)
    assert {(text[e["start"] : e["end"]], e["label"]) for e in ann["entities"]} == {
        ("metformin", "DRUG"),
        ("excessive thirst", "SYMPTOM"),
    }
    assert ann["sentiment"] == "negative" and all(e["label"] in ENTITY_LABELS for e in ann["entities"])
    c = kb.CONDITIONS[1]
    q, a = b.rewrite_spoken("Which test confirms asthma?", kb.long_answer(c, "test"))
    assert q.endswith("?") and "asthma" in q
    assert spoken_ok(a) and c.test in a and "|" not in a
    assert b.rewrite_spoken("Which test?", kb.long_answer(c, "test", reference_only=True)) is None


def test_espeak_voices_differ():
    voices = voice_bank(4, seed=0)
    assert len({v.id for v in voices}) == 4 and {v.gender for v in voices} == {"female", "male"}
    tts = EspeakTTS()
    a, rate = tts.synthesize("I have a headache.", voices[0])
    b, _ = tts.synthesize("I have a headache.", voices[1])
    assert rate > 8000 and len(a) > rate * 0.3 and (len(a) != len(b) or not np.allclose(a, b))


# --- batching and config ------------------------------------------------------------------------------


def test_bucketing_reduces_padding():
    rng = random.Random(0)
    lengths = [rng.randint(10, 500) for _ in range(256)]
    plain = plan_batches(lengths, batch_rows=8, bucketing=False)
    bucketed = plan_batches(lengths, batch_rows=8, bucketing=True, rng=random.Random(1))
    assert sorted(i for b in bucketed for i in b) == list(range(256))
    assert padding_fraction(lengths, bucketed) < padding_fraction(lengths, plain) / 3
    budget = plan_batches(lengths, batch_rows=64, batch_tokens=1024)
    assert all(max(lengths[i] for i in b) * len(b) <= 1024 for b in budget)


def test_example_encoding_roundtrip():
    ex = {
        "input_ids": np.arange(5),
        "input_features": np.zeros((0, 80, 100), np.float32),
        "num_tokens": np.int64(5),
    }
    back = decode_example(encode_example(ex))
    assert back["input_features"].shape == (0, 80, 100) and int(back["num_tokens"]) == 5


def test_data_spec_resolution():
    spec = DataSpec(
        root="s3://b/data",
        datasets=[
            {"name": "utterances_ner", "weight": 2},
            {"name": "x", "uri": "/tmp/x", "kind": "speech_dialogue"},
        ],
    )
    a, b = spec.resolved()
    assert (a.uri, a.kind, a.task, a.weight) == ("s3://b/data/utterances", "utterance", "ner", 2.0)
    assert (b.uri, b.task) == ("/tmp/x", "chat")
    assert spec.quarantine() == "s3://b/data/_quarantine"
    with pytest.raises(ConfigError, match="not registered"):
        load_config(DataSpec, None, ["datasets=[{name: nope}]"])


def test_sentences_broad_distinct_and_labelled():
    from medlm.data import sentences
    from medlm.data.schema import check_entities

    rng = random.Random(0)
    rows = [sentences.sentence(rng) for _ in range(2000)]
    assert rows[:5] == [sentences.sentence(r) for r in [random.Random(0)] for _ in range(5)]  # seeded
    assert len({r["text"] for r in rows}) > 1800  # distinct
    words = {w for r in rows for w in r["text"].lower().split()}
    assert len(words) > 800  # broad vocabulary
    kb_questions = {q.split("{")[0] for qs in kb.QUESTIONS.values() for q in qs}
    assert not any(
        r["text"].startswith(tuple(kb_questions)) for r in rows
    )  # held-out question forms never said
    for r in rows:
        values = {
            "CONDITION": sentences.CONDITIONS,
            "DRUG": sentences.DRUGS,
            "TEST": sentences.TESTS,
            "SYMPTOM": sentences.SYMPTOMS,
        }
        for e in r["entities"]:
            span = r["text"][e["start"] : e["end"]]
            assert e["label"] in ENTITY_LABELS and span.strip() == span and span
            kb_terms = sentences._kb_terms()
            if e["label"] in values:
                assert span in values[e["label"]] or span in kb_terms[e["label"].lower()], span
        row = {
            "id": "s",
            "audio": b"",
            "sample_rate": 16000,
            "transcript": r["text"],
            "entities": r["entities"],
            "sentiment": r["sentiment"],
        }
        check_entities(row)
    assert {r["sentiment"] for r in rows} == set(SENTIMENTS)


def test_one_table_gives_the_factory_datasets_and_the_registry():
    from medlm.data.factory import DATASETS, KIND_OF
    from medlm.data.registry import FACTORY_DATASETS, REGISTRY

    assert DATASETS == (
        "consult_text",
        "qa_text",
        "consult_speech",
        "qa_speech",
        "qa_speech_heldout",
        "utterances",
        "sentences",
        "ct",
    )
    assert KIND_OF == {d.path: d.kind for d in FACTORY_DATASETS}
    assert {(n, r.path, r.kind, r.task) for n, r in REGISTRY.items()} >= {
        ("consult_text", "consult_text", "text_dialogue", "chat"),
        ("qa_speech_heldout", "qa_speech_heldout", "speech_dialogue", "chat"),
        ("utterances_multitask", "utterances", "utterance", "multitask"),
        ("sentences_ner", "sentences", "utterance", "ner"),
        ("ct_reports", "ct", "ct", "report"),
        ("ct_spoken_reports", "ct", "ct", "spoken_report"),
    }
    assert all(KIND_OF[r.path] == r.kind for r in REGISTRY.values() if r.path in KIND_OF)


def test_envelopes_stream_a_shard_with_a_row_limit(tmp_path):
    import pyarrow as pa

    from medlm.data.pipeline import ENVELOPE, envelope, envelope_row, iter_envelopes

    write_rows([utt_row(i) for i in range(5)], str(tmp_path / "u"), "utterance")
    (shard,) = shard_files(str(tmp_path / "u"))
    tables = list(iter_envelopes(shard, "utterances_asr", "utterance", "asr", rows=2, limit=3))
    assert [t.num_rows for t in tables] == [2, 1] and all(t.schema.equals(ENVELOPE) for t in tables)
    rows = pa.concat_tables(tables).to_pylist()
    assert [r["id"] for r in rows] == ["u0", "u1", "u2"]
    assert {(r["dataset"], r["kind"], r["task"]) for r in rows} == {("utterances_asr", "utterance", "asr")}
    assert envelope_row(rows[1])["transcript"] == utt_row(1)["transcript"]
    assert sum(t.num_rows for t in iter_envelopes(shard, "u", "utterance", "asr", rows=2)) == 5
    one = envelope([{"condition": "gout"}], "c", "c", "c", ids=["gout"]).to_pylist()[0]
    assert one["id"] == "gout" and envelope_row(one) == {"condition": "gout"}


def test_make_shards_fans_out_the_named_datasets(tmp_path, monkeypatch):
    """One task per planned shard of the named datasets, stats in plan order (Ray replaced by a stand-in)."""
    import sys
    import types

    from medlm.data.factory import MakeDataConfig, make_shards, plan

    calls = []
    fake = types.ModuleType("ray")
    fake.remote = lambda **opts: (
        lambda fn: types.SimpleNamespace(remote=lambda *a: calls.append((opts, a[1], a[2])) or fn(*a))
    )
    fake.wait = lambda pending, num_returns: (pending[:num_returns], pending[num_returns:])
    fake.get = lambda refs: refs
    monkeypatch.setitem(sys.modules, "ray", fake)
    cfg = MakeDataConfig(
        output=str(tmp_path / "data"),
        consultations=3,
        speech_consultations=0,
        utterances=0,
        sentences=0,
        ct_cases=2,
        ct_shape=(8, 8, 8),
        spoken_ct_reports=False,
        rows_per_shard=2,
    )
    assert make_shards(cfg, []) == [] and make_shards(cfg, ["nothing"]) == [] and calls == []
    stats = make_shards(cfg, {"ct", "consult_text"})
    assert [(s["dataset"], s["rows"]) for s in stats] == [("consult_text", 2), ("consult_text", 1), ("ct", 2)]
    assert [(d, i) for _, d, i in calls] == [(n, i) for n, i, _ in plan(cfg) if n in ("ct", "consult_text")]
    assert all(opts == {"num_cpus": 1} for opts, _, _ in calls)
    assert read_table(str(tmp_path / "data" / "consult_text")).num_rows == 3


def test_self_answers_are_the_models_own_answers_to_the_transcripts(tmp_path):
    """Targets from the model's own text answers: spoken sentences become one-turn consultations answered by
    the export's greedy answer to the transcript (what it says when the question is typed); rows without a
    transcript are skipped."""
    import json

    import torch

    from medlm.data.targets import write_self_answers
    from medlm.models import ModelSpec, build_model

    torch.manual_seed(0)
    model, proc = build_model(ModelSpec())
    model.save_pretrained(tmp_path / "export")
    proc.save_pretrained(tmp_path / "export")
    rows = [utt_row(0), utt_row(1, transcript="Is ibuprofen safe for me?"), utt_row(2, transcript=None)]
    write_rows(rows, str(tmp_path / "utts"), "utterance")
    out = write_self_answers(
        str(tmp_path / "export"),
        str(tmp_path / "utts"),
        str(tmp_path / "self"),
        "utterance",
        max_new_tokens=6,
    )
    assert out == {"rows": 2, "skipped": 1}
    written = {r["id"]: r for r in iter_rows(str(tmp_path / "self"))}
    model.eval()
    for r in rows[:2]:
        typed = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": r["transcript"]}]
        with torch.no_grad():
            ids = model.generate(**proc.prepare_generation([typed]), max_new_tokens=6, do_sample=False)
        turns = written[r["id"]]["turns"]
        assert [t["role"] for t in turns] == ["user", "assistant"] and turns[0]["audio"] == r["audio"]
        assert turns[1]["text"] == proc.decode(ids)[0].strip()
        assert json.loads(written[r["id"]]["meta"])["target"] == "self"


def test_self_answer_sets_are_written_once_per_model_and_point_the_job_at_them(tmp_path):
    """The recipes' step between stage 1 and stage 2: a preset's stage-2 job that trains on self-answer sets
    gets them written from its data root by the given model (the first N rows where the preset says so),
    kept on a second call with the same model, rewritten for another (also one retrained at the same path) or
    another row count; an unknown set is refused."""
    import json

    import torch

    from medlm.data.targets import DONE, write_self_answer_sets
    from medlm.models import ModelSpec, build_model
    from recipes.presets import load_preset

    torch.manual_seed(0)
    model, proc = build_model(ModelSpec())
    for name in ("a", "b"):
        model.save_pretrained(tmp_path / name)
        proc.save_pretrained(tmp_path / name)
    data = tmp_path / "data"
    write_rows(
        [utt_row(i, transcript=f"Is dose {i} safe?") for i in range(3)], str(data / "sentences"), "utterance"
    )

    p = load_preset("reproduce", "real", ["self_answer_rows={sentences_self: 2}"])
    stage2 = p.train_config("stage2")
    assert any(e.name == "sentences_self" for e in stage2.data.datasets)
    with pytest.raises(FileNotFoundError):  # qa_speech_self's source is not there
        p.self_answers("stage2", str(tmp_path / "a"), str(data), str(tmp_path / "out"))
    question = {"role": "user", "audio": encode_flac(tone(), 22050), "sample_rate": 22050, "text": None}
    turns = [{**question, "transcript": "Is this serious?"}, {"role": "assistant", "text": "No."}]
    write_rows(
        [{"id": "q0", "source": "t", "meta": "{}", "turns": turns}],
        str(data / "qa_speech"),
        "speech_dialogue",
    )
    overrides = p.self_answers("stage2", str(tmp_path / "a"), str(data), str(tmp_path / "out"))
    entries = p.train_config("stage2", *overrides).data.datasets
    uris = {e.name: e.uri for e in entries if e.uri}
    assert uris == {n: str(tmp_path / "out" / n) for n in ("qa_speech_self", "sentences_self")}
    assert [e.name for e in entries] == [e.name for e in stage2.data.datasets]  # same mix, same weights
    assert [e.weight for e in entries] == [e.weight for e in stage2.data.datasets]
    assert sorted(r["id"] for r in iter_rows(uris["sentences_self"])) == ["u0", "u1"]  # the first 2 rows
    assert json.loads((tmp_path / "out" / "sentences_self" / DONE).read_text())["rows"] == 2

    shard = next((tmp_path / "out" / "sentences_self").glob("part-*.parquet"))
    before = shard.stat().st_mtime_ns
    write_self_answer_sets(str(tmp_path / "a"), str(data), str(tmp_path / "out"), {"sentences_self": 2})
    assert next((tmp_path / "out" / "sentences_self").glob("part-*.parquet")).stat().st_mtime_ns == before
    model.save_pretrained(tmp_path / "a")  # retrained in place: the same path is another model
    write_self_answer_sets(str(tmp_path / "a"), str(data), str(tmp_path / "out"), {"sentences_self": 2})
    assert next((tmp_path / "out" / "sentences_self").glob("part-*.parquet")).stat().st_mtime_ns > before
    write_self_answer_sets(str(tmp_path / "b"), str(data), str(tmp_path / "out"), {"sentences_self": 3})
    assert sorted(r["id"] for r in iter_rows(uris["sentences_self"])) == ["u0", "u1", "u2"]
    (data / "sentences" / "_encoder").mkdir()  # a cache beside the source's shards changes nothing ...
    (data / "sentences" / "_encoder" / "part-00000.parquet").write_bytes(b"frames")
    before = next((tmp_path / "out" / "sentences_self").glob("part-*.parquet")).stat().st_mtime_ns
    write_self_answer_sets(str(tmp_path / "b"), str(data), str(tmp_path / "out"), {"sentences_self": 3})
    assert next((tmp_path / "out" / "sentences_self").glob("part-*.parquet")).stat().st_mtime_ns == before
    write_rows(
        [utt_row(i, id=f"v{i}") for i in range(3)], str(data / "sentences"), "utterance"
    )  # ... new rows do
    write_self_answer_sets(str(tmp_path / "b"), str(data), str(tmp_path / "out"), {"sentences_self": 3})
    assert sorted(r["id"] for r in iter_rows(uris["sentences_self"])) == ["v0", "v1", "v2"]
    with pytest.raises(ValueError, match="not a self-answer set"):
        write_self_answer_sets(str(tmp_path / "a"), str(data), str(tmp_path / "out"), {"qa_text": None})
