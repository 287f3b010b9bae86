"""Integration: make_data writes every shard kind to the local S3 server; a Ray Train job streams them
back through the featurizing actors, with bad records planted among good ones."""

import json
import math
import uuid

import numpy as np
import pytest

from medlm import storage
from medlm.data.factory import DATASETS, KIND_OF, MakeDataConfig, make_data
from medlm.data.io import read_table, write_rows
from medlm.data.quarantine import read_quarantine
from medlm.data.registry import DataSpec
from medlm.data.schema import encode_flac, schema_for

pytestmark = pytest.mark.slow


def tone(seconds=1.0, rate=22050):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def made(stack):
    cfg = MakeDataConfig(
        output=f"{stack.root}/data-{uuid.uuid4().hex[:6]}",
        consultations=6,
        speech_consultations=3,
        utterances=6,
        sentences=6,
        ct_cases=2,
        rows_per_shard=4,
    )
    return cfg, make_data(cfg, progress=False)


def test_make_data_writes_all_kinds(made):
    cfg, summary = made
    assert set(summary["datasets"]) == set(DATASETS)
    for name, d in summary["datasets"].items():
        table = read_table(d["uri"])
        assert table.num_rows == d["rows"] > 0, name
        assert table.schema.equals(schema_for(KIND_OF[name]), check_metadata=False), name
    assert summary["datasets"]["consult_text"]["shards"] == 2  # 6 rows, 4 per shard
    assert summary["datasets"]["qa_text"]["rows"] == summary["facts"]
    assert summary["audio_hours"] > 0 and len(summary["voices"]) >= 4
    assert summary["quarantine"]["total"] == 0
    spoken = summary["datasets"]["qa_speech"]["rows"] + summary["datasets"]["qa_speech_heldout"]["rows"]
    assert (
        spoken
        + summary["datasets"]["qa_speech"]["filtered"]
        + summary["datasets"]["qa_speech_heldout"]["filtered"]
        == summary["facts"]
    )
    facts = [json.loads(x) for x in storage.read_text(f"{cfg.output}/facts.jsonl").splitlines()]
    heldout = {
        json.loads(r["meta"])["fact_id"] for r in read_table(f"{cfg.output}/qa_speech_heldout").to_pylist()
    }
    assert heldout and all(not f["speech"] for f in facts if f["fact_id"] in heldout)  # never heard as speech
    assert json.loads(storage.read_text(f"{cfg.output}/manifest.json"))["facts"] == summary["facts"]


def plant(root: str) -> tuple[dict[str, set], dict[str, str]]:
    """Shards mixing good and bad rows; returns (good ids per dataset, bad id -> expected reason)."""
    good_audio = encode_flac(tone(), 22050)
    text = "I have had fever for two days."

    def utt(i, **kw):
        return {
            "id": i,
            "source": "t",
            "audio": good_audio,
            "sample_rate": 22050,
            "transcript": text,
            "entities": [{"start": 11, "end": 16, "label": "SYMPTOM"}],
            "sentiment": "neutral",
            "speaker": "{}",
            "meta": "{}",
            **kw,
        }

    bad_utt = {
        "u-corrupt": utt("u-corrupt", audio=b"\x00garbage" * 50),
        "u-empty": utt("u-empty", audio=encode_flac(np.zeros(22050, np.float32), 22050)),
        "u-truncated": utt("u-truncated", audio=good_audio[: len(good_audio) // 3]),
        "u-wrongrate": utt("u-wrongrate", sample_rate=16000),
        "u-long": utt("u-long", audio=encode_flac(tone(4.0), 22050)),
        "u-notext": utt("u-notext", transcript=None),
        "u-label": utt("u-label", sentiment="ecstatic"),
        "u-entity": utt("u-entity", entities=[{"start": 0, "end": 1, "label": "GENE"}]),
    }
    reasons = {
        "u-corrupt": "corrupt_audio",
        "u-empty": "empty_audio",
        "u-truncated": "truncated_audio",
        "u-wrongrate": "sample_rate_mismatch",
        "u-long": "audio_too_long",
        "u-notext": "missing_field",
        "u-label": "unknown_label",
        "u-entity": "unknown_label",
    }
    good_utt = [utt(f"u-good-{i}") for i in range(5)]
    rows = good_utt[:2] + list(bad_utt.values())[:4] + good_utt[2:] + list(bad_utt.values())[4:]
    write_rows(rows, f"{root}/planted_utt", "utterance", rows_per_shard=6)

    def turn(role, **kw):
        return {
            "role": role,
            "text": None,
            "audio": None,
            "sample_rate": None,
            "transcript": None,
            **kw,
        }

    def dlg(i, turns):
        return {"id": i, "source": "t", "meta": "{}", "turns": turns}

    good_dlg = [
        dlg(
            f"d-good-{i}",
            [
                turn("user", audio=good_audio, sample_rate=22050, transcript=text),
                turn("assistant", text="Rest and drink fluids."),
            ],
        )
        for i in range(3)
    ]
    bad_dlg = [
        dlg("d-role", [turn("nurse", text="hi"), turn("assistant", text="ok")]),
        dlg("d-blank", [turn("user"), turn("assistant", text="ok")]),
        dlg("d-noanswer", [turn("user", text="hello?")]),
    ]
    reasons.update({"d-role": "unknown_label", "d-blank": "missing_field", "d-noanswer": "missing_field"})
    write_rows(
        [good_dlg[0], bad_dlg[0], good_dlg[1], bad_dlg[1], bad_dlg[2], good_dlg[2]],
        f"{root}/planted_dlg",
        "speech_dialogue",
    )
    return {"planted_utt": {r["id"] for r in good_utt}, "planted_dlg": {r["id"] for r in good_dlg}}, reasons


def test_training_streams_mix_and_quarantines_bad_records(stack, made, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from medlm.data.pipeline import build_dataset, mixed_envelopes
    from medlm.models import ModelSpec

    cfg, _ = made
    good, reasons = plant(cfg.output)
    spec = DataSpec(
        root=cfg.output,
        seed=7,
        max_audio_seconds=3.0,
        batch_rows=4,
        featurizer_cpus=0.5,
        quarantine_uri=f"{cfg.output}/_quarantine/run-{uuid.uuid4().hex[:6]}",
        datasets=[
            {
                "name": "planted_utt",
                "uri": f"{cfg.output}/planted_utt",
                "kind": "utterance",
                "task": "multitask",
                "weight": 1,
            },
            {"name": "planted_dlg", "uri": f"{cfg.output}/planted_dlg", "kind": "speech_dialogue"},
            {"name": "consult_text", "weight": 2},
            {"name": "ct_reports"},
        ],
    )
    # the mixed order is reproducible
    order = [r["id"] for r in mixed_envelopes(spec).select_columns(["id"]).take_all()]
    assert order == [r["id"] for r in mixed_envelopes(spec).select_columns(["id"]).take_all()]
    good["consult_text"] = {r["id"] for r in read_table(f"{cfg.output}/consult_text").to_pylist()}
    good["ct_reports"] = {r["id"] for r in read_table(f"{cfg.output}/ct").to_pylist()}
    assert set(order) == set().union(*good.values(), reasons)

    def train_loop(config):
        """A Ray Train worker: stream its shard, run the model on a few batches, return ids and losses."""
        import ray.train

        from medlm.data.pipeline import iter_train_batches
        from medlm.models import ModelSpec, build_model

        spec = DataSpec(**config["data"])
        model, processor = build_model(ModelSpec(**config["model"]))
        ids, datasets, losses, padding = [], [], [], []  # padding: share of padded positions per batch
        for batch in iter_train_batches(ray.train.get_dataset_shard("train"), processor, spec, with_ids=True):
            ids += batch.pop("ids")
            datasets += batch.pop("datasets")
            lengths = batch.pop("num_tokens")
            padding.append(float(1 - lengths.sum() / (lengths.max() * len(lengths))))
            if len(losses) < 2:
                losses.append(float(model(**batch).loss))
        with open(config["out"], "w") as f:  # the test reads this back (same machine)
            json.dump({"ids": ids, "datasets": datasets, "losses": losses, "padding": padding}, f)

    model = ModelSpec(preset="tiny", num_classes=3)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "data": spec.model_dump(),
            "model": model.model_dump(),
            "out": str(tmp_path / "worker.json"),
        },
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        datasets={"train": build_dataset(spec, model)},
        run_config=RunConfig(storage_path=str(tmp_path), name=f"data-{uuid.uuid4().hex[:6]}"),
    )
    trainer.fit()
    metrics = json.loads((tmp_path / "worker.json").read_text())

    # every good record arrives exactly once, from the right dataset
    assert sorted(metrics["ids"]) == sorted(set().union(*good.values()))
    for rid, ds in zip(metrics["ids"], metrics["datasets"]):
        assert rid in good[ds]
    assert len(metrics["losses"]) == 2 and all(math.isfinite(x) for x in metrics["losses"])
    # every bad record is in the report with its reason
    report = {r["id"]: r for r in read_quarantine(spec.quarantine())}
    assert {k: v["reason"] for k, v in report.items()} == reasons
    assert all("fever" not in json.dumps(r) for r in report.values())  # no transcripts in the report


def test_encoder_frames_are_computed_once_and_read_in_place_of_audio(stack, made):
    """``data.encoder_cache``: one Ray Data step writes the frozen encoder's frames of every shard beside it
    (not listed as shards), a second computes nothing, the pipeline then yields the same examples with
    ``audio_frames`` instead of features (bad records quarantined as without the cache); a rewritten shard's
    frames are stale and refused until computed again; frames of another encoder are refused."""
    from medlm.data.encoder_cache import prepare
    from medlm.data.frames import cache_uri, is_fresh
    from medlm.data.io import shard_files
    from medlm.data.pipeline import build_dataset, iter_examples
    from medlm.models import ModelSpec
    from medlm.models.encoder import AudioFrontend
    from medlm.models.pretrained import PARTS, is_fetched

    if not all(is_fetched(n) for n in PARTS):
        pytest.skip("model store not fetched (run `medlm models fetch`)")
    cfg, _ = made
    root = f"{cfg.output}/cache-{uuid.uuid4().hex[:6]}"
    good, reasons = plant(root)

    def spec_for(run: str, **kw) -> DataSpec:
        return DataSpec(
            root=root,
            max_audio_seconds=3.0,
            quarantine_uri=f"{root}/_quarantine/{run}",
            datasets=[
                {"name": "u", "uri": f"{root}/planted_utt", "kind": "utterance", "task": "multitask"},
                {"name": "d", "uri": f"{root}/planted_dlg", "kind": "speech_dialogue"},
            ],
            **kw,
        )

    model = ModelSpec(preset="real")
    spec = spec_for("live")
    shards = [s for d in spec.resolved() for s in shard_files(d.uri)]
    cached = prepare(spec, model, actors=2)
    key = cached.encoder_key
    assert all(is_fresh(s, key) for s in shards)
    assert [s for d in spec.resolved() for s in shard_files(d.uri)] == shards  # the frames are not shards

    def mtimes():
        out = {}
        for s in shards:
            fs, path = storage.resolve(cache_uri(s, key))
            out[s] = fs.get_file_info(path).mtime_ns
        return out

    before = mtimes()
    assert prepare(spec, model).encoder_key == key and mtimes() == before  # nothing computed twice

    live = {e["id"]: e for e in iter_examples(build_dataset(spec, model))}
    from_cache_spec = cached.model_copy(update={"quarantine_uri": f"{root}/_quarantine/cached"})
    from_cache = {e["id"]: e for e in iter_examples(build_dataset(from_cache_spec, model))}
    assert live.keys() == from_cache.keys() == set().union(*good.values())
    frontend = AudioFrontend(model_encoder_config(model))
    for rid, e in live.items():
        c = from_cache[rid]
        assert "audio_frames" in c and "input_features" not in c
        assert c["input_ids"].tolist() == e["input_ids"].tolist() and int(c["num_tokens"]) == int(
            e["num_tokens"]
        )
        assert c["audio_frame_counts"].tolist() == [
            frontend.encoder_frames(n) for n in e["audio_chunk_lengths"]
        ]
    for q in (spec.quarantine(), from_cache_spec.quarantine()):
        assert {r["id"]: r["reason"] for r in read_quarantine(q)} == reasons

    # a shard rewritten with other rows: its frames are stale, reading them is refused, prepare computes them
    utt = read_table(f"{root}/planted_utt").to_pylist()
    storage.delete_files(f"{root}/planted_utt", "part-")
    write_rows(utt[:4], f"{root}/planted_utt", "utterance", rows_per_shard=6)
    (rewritten,) = shard_files(f"{root}/planted_utt")
    assert not is_fresh(rewritten, key)
    with pytest.raises(Exception, match="no current encoder frames"):
        list(iter_examples(build_dataset(from_cache_spec, model)))
    assert prepare(spec, model).encoder_key == key and is_fresh(rewritten, key)
    # frames of another encoder are refused
    with pytest.raises(ValueError, match="computed by encoder 0000000000000000"):
        prepare(spec.model_copy(update={"encoder_key": "0" * 16}), model)


def model_encoder_config(model_spec):
    from medlm.models.build import encoder_config, resolve_spec

    return encoder_config(resolve_spec(model_spec))
