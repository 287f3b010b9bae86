"""The ct_clip job end to end on the tiny preset (S3 shards, Ray Data, Ray Train + DeepSpeed ZeRO-2),
then a CTIndex built from its output answering top-k queries."""

import json

import numpy as np
import pytest

from medlm import storage


@pytest.mark.slow
def test_ct_clip_job_end_to_end_and_index(stack, tmp_path, scratch):
    from medlm.config import load_config
    from medlm.ct import CTIndex
    from medlm.ct.job import CTClipConfig, run_ct_clip
    from medlm.data import iter_rows
    from medlm.data.schema import CT_RATE_CLASSES, unpack_volume
    from medlm.models.tts import speak, voice_bank

    output = storage.join(stack.root, "test-ct-clip")
    steps = ["teacher.steps=2", "align.steps=2", "distill.steps=2"]
    batch = ["teacher.batch_size=4", "align.batch_size=4", "distill.batch_size=4"]
    text = [
        "model.text_per_sentence=true",
        "teacher.sentence_keep=0.5",
    ]  # the trained BERT reads kept sentences
    cfg = load_config(
        CTClipConfig,
        "configs/ct_clip.yaml",
        [f"output={output}", "data.synthetic_cases=24", "name=test-ct-clip", *steps, *batch, *text],
    )
    before = scratch()
    summary = run_ct_clip(cfg)

    # exports are HF save_pretrained dirs on S3; results were written next to them
    for name in ("teacher", "student_align", "student"):
        assert storage.exists(storage.join(output, name, "config.json"))
    assert json.loads(storage.read_text(storage.join(output, "teacher", "config.json")))["text_per_sentence"]
    results = json.loads(storage.read_text(storage.join(output, "results.json")))
    assert set(results["zero_shot"]) == {"teacher_text", "speech_no_kd", "speech_kd"}
    for m in results["zero_shot"].values():
        assert set(m["per_class"]) == set(CT_RATE_CLASSES)
    for r in results["retrieval"].values():
        assert 0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 1
    assert summary["exports"]["student"] == storage.join(output, "student")
    # a fair comparison: both students trained the same steps from the same weights; only the loss differs
    no_kd, kd = summary["training"]["speech_no_kd"], summary["training"]["speech_kd"]
    assert no_kd["steps"] == kd["steps"] == 2 and no_kd["start"] == kd["start"]
    assert (
        (no_kd["phase"], kd["phase"]) == ("no_kd", "distill") and "kd_loss" in kd and "kd_loss" not in no_kd
    )
    assert "| speech, with KD |" in storage.read_text(storage.join(output, "results.md"))

    # the retriever index built from the job's output
    rows = [r for r in iter_rows(storage.join(output, "data", "ct")) if r["split"] == "test"]
    volumes = [unpack_volume(r["volume"], r["shape"]) for r in rows]
    index = CTIndex.build(output, volumes, [r["id"] for r in rows], [r["spacing"] for r in rows])
    index.save(str(tmp_path / "index"))
    index.save(storage.join(output, "index"))
    from_s3 = CTIndex.load(storage.join(output, "index"))
    index = CTIndex.load(str(tmp_path / "index"))
    assert from_s3.ids == index.ids and np.array_equal(from_s3.embeddings, index.embeddings)
    assert scratch() == before, "the job's checkpoints and the index's staging dir are removed"
    ids = {r["id"] for r in rows}
    hits = index.search_text(rows[0]["report"], k=3)
    assert len(hits) == 3 and {h[0] for h in hits} <= ids and hits[0][1] >= hits[1][1] >= hits[2][1]
    audio_hits = index.search_audio(
        speak(["Cardiomegaly is present."], voice_bank(1, backend="espeak")[0])[0], k=len(rows) + 5
    )
    assert sorted(h[0] for h in audio_hits) == sorted(
        ids
    )  # k larger than the index returns every volume once
    scores = index.classify("Cardiomegaly is present.", ["Cardiomegaly", "Emphysema"])
    assert set(scores) == {"Cardiomegaly", "Emphysema"} and all(0 < v < 1 for v in scores.values())
    by_id = index.classify_volume(id=rows[0]["id"])
    by_volume = index.classify_volume(volume=volumes[0], spacing=rows[0]["spacing"])
    assert list(by_id) == list(CT_RATE_CLASSES)
    np.testing.assert_allclose(list(by_id.values()), list(by_volume.values()), atol=1e-5)
    with pytest.raises(ValueError, match="unknown classes"):
        index.classify("x", ["Broken leg"])
    with pytest.raises(KeyError):
        index.classify_volume(id="nope")
