"""SpeechCT-CLIP units: synthetic volumes, the preprocessing contract, losses, metrics, models
(fast, no Ray)."""

import gzip
import itertools
import math

import numpy as np
import pytest
import torch

from medlm.ct.metrics import gap_recovered, zero_shot_probs
from medlm.ct.preprocess import VolumeSpec, crop_or_pad, load_volume, normalize_hu, preprocess_volume
from medlm.data.schema import CT_RATE_CLASSES
from medlm.data.synth_ct import base_spacing, generate_ct_cases

SHAPE = (16, 32, 32)


# --- synthetic set ------------------------------------------------------------------------------


def test_generate_ct_cases_contract_and_determinism():
    cases = generate_ct_cases(20, SHAPE, seed=3)
    again = generate_ct_cases(20, SHAPE, seed=3)
    other = generate_ct_cases(20, SHAPE, seed=4)
    assert len(CT_RATE_CLASSES) == 18 and len(set(CT_RATE_CLASSES)) == 18
    assert [c["split"] for c in cases].count("train") == 14 and [c["split"] for c in cases].count("val") == 3
    for c, d in zip(cases, again):
        assert c["volume"].dtype == np.int16 and c["volume"].shape == SHAPE
        assert (
            np.array_equal(c["volume"], d["volume"])
            and c["report"] == d["report"]
            and c["spacing"] == d["spacing"]
        )
        assert c["labels"].dtype == np.int8 and c["labels"].shape == (18,)
        assert all(0.9 * b <= s <= 1.1 * b for s, b in zip(c["spacing"], base_spacing(SHAPE)))
    assert any(not np.array_equal(c["volume"], d["volume"]) for c, d in zip(cases, other))
    vol = cases[0]["volume"]
    assert vol.min() <= -990 and (vol > 300).any()  # air outside the body, bone inside


def test_reports_mention_exactly_the_present_findings():
    for c in generate_ct_cases(30, SHAPE, seed=0):
        impression = c["report"].split("Impression:")[1].lower()
        for i, name in enumerate(CT_RATE_CLASSES):
            assert (name.lower() in impression) == bool(c["labels"][i]), (name, c["labels"][i])


def test_planted_findings_change_the_volume():
    """Same case with and without a class differs where that class is planted
    (e.g. effusion = fluid in lung)."""
    from medlm.data.synth_ct import _render

    labels = np.zeros(18, dtype=np.int8)
    base = _render(np.random.default_rng(0), labels, (32, 64, 64), base_spacing((32, 64, 64)))
    effusion = labels.copy()
    effusion[CT_RATE_CLASSES.index("Pleural effusion")] = 1
    wet = _render(np.random.default_rng(0), effusion, (32, 64, 64), base_spacing((32, 64, 64)))
    changed = np.abs(wet.astype(int) - base.astype(int)) > 200
    assert changed.sum() > 100 and np.median(wet[changed]) > -100 and np.median(base[changed]) < -700
    big = labels.copy()
    big[CT_RATE_CLASSES.index("Cardiomegaly")] = 1
    heart = _render(np.random.default_rng(0), big, (32, 64, 64), base_spacing((32, 64, 64)))
    assert (heart < -500).sum() < (base < -500).sum()  # a bigger heart displaces lung


def test_generate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n must be"):
        generate_ct_cases(0, SHAPE, 0)
    with pytest.raises(ValueError, match="shape"):
        generate_ct_cases(2, (4, 32, 32), 0)


# --- preprocessing contract ----------------------------------------------------------------------


def test_hu_clipping_and_scaling_on_known_values():
    vol = np.array([-3000, -1000, -500, 0, 40, 1000, 3000], dtype=np.int16).reshape(1, 1, 7)
    np.testing.assert_allclose(normalize_hu(vol).ravel(), [-1, -1, -0.5, 0, 0.04, 1, 1], atol=1e-6)


def test_preprocess_resamples_to_target_spacing_and_shape():
    # 20 slices at 3 mm, 40x40 at 1.5 mm, left half -1000 HU (air), right half +2000 (clipped to 1000)
    vol = np.full((20, 40, 40), -1000, dtype=np.int16)
    vol[:, :, 20:] = 2000
    spec = VolumeSpec(target_shape=(30, 40, 40), target_spacing=(2.0, 3.0, 3.0))
    out = preprocess_volume(vol, (3.0, 1.5, 1.5), spec)
    assert out.shape == (30, 40, 40) and out.dtype == np.float32
    # physical extent 60 x 60 x 60 mm -> 30 x 20 x 20 voxels, padded to 40 x 40 in-plane with -1 (air)
    inside = out[:, 10:30, 10:30]
    np.testing.assert_allclose(inside[:, :, :9], -1.0, atol=1e-6)
    np.testing.assert_allclose(inside[:, :, 11:], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[:, :10], -1.0)
    assert out.min() >= -1 and out.max() <= 1


def test_crop_or_pad_is_centred():
    x = np.arange(10, dtype=np.float32).reshape(1, 1, 10)
    np.testing.assert_array_equal(crop_or_pad(x, (1, 1, 4))[0, 0], [3, 4, 5, 6])
    np.testing.assert_array_equal(crop_or_pad(x, (1, 1, 12))[0, 0], [-1, *range(10), -1])


def test_full_preset_is_ct_clip():
    spec = VolumeSpec()
    assert spec.target_shape == (240, 480, 480) and spec.target_spacing == (1.5, 0.75, 0.75)


def test_preprocess_rejects_bad_input():
    spec = VolumeSpec(target_shape=(4, 4, 4), target_spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="3-D"):
        preprocess_volume(np.zeros((4, 4)), (1, 1, 1), spec)
    with pytest.raises(ValueError, match="spacing"):
        preprocess_volume(np.zeros((4, 4, 4)), (1, 0, 1), spec)
    with pytest.raises(ValueError, match="NaN"):
        preprocess_volume(np.full((4, 4, 4), np.nan), (1, 1, 1), spec)


def test_load_volume_nifti_and_npy(tmp_path):
    import nibabel as nib

    vol = np.random.default_rng(0).integers(-1000, 1000, size=(6, 7, 8)).astype(np.int16)  # (D, H, W)
    img = nib.Nifti1Image(vol.transpose(2, 1, 0), affine=np.diag([0.7, 0.8, 1.5, 1.0]))  # NIfTI is x, y, z
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(gzip.compress(img.to_bytes()))
    got, spacing = load_volume(str(path))
    np.testing.assert_array_equal(got, vol)
    np.testing.assert_allclose(spacing, (1.5, 0.8, 0.7))
    np.save(tmp_path / "ct.npy", vol)
    got, spacing = load_volume(str(tmp_path / "ct.npy"), spacing=(2, 1, 1))
    np.testing.assert_array_equal(got, vol)
    with pytest.raises(ValueError, match="spacing"):
        load_volume(str(tmp_path / "ct.npy"))
    with pytest.raises(ValueError, match="unsupported"):
        load_volume(str(tmp_path / "ct.png"))


# --- losses ---------------------------------------------------------------------------------------


def test_contrastive_loss_aligned_vs_shuffled():
    from medlm.ct.modeling import clip_loss

    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(16, 32, generator=g), dim=-1)
    b = torch.nn.functional.normalize(a + 0.1 * torch.randn(16, 32, generator=g), dim=-1)
    scale = torch.tensor([math.log(1 / 0.07)])
    aligned = clip_loss(a, b, scale)
    shuffled = clip_loss(a, b[torch.randperm(16, generator=g)], scale)
    assert aligned < 0.1 < math.log(16) < shuffled


def test_kd_loss_zero_iff_distributions_match():
    from medlm.ct.modeling import kd_loss

    t = torch.randn(8, 8)
    assert float(kd_loss(t.clone(), t)) == pytest.approx(0, abs=1e-6)
    assert float(kd_loss(torch.randn(8, 8), t)) > 0.05


def test_distillation_moves_the_student_toward_the_teacher():
    """Gradient steps on the KD loss make the student's similarities match the teacher's
    (KL falls, argmax agrees)."""
    from medlm.ct.modeling import kd_loss

    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(12, 16), dim=-1)
    teacher_q = torch.nn.functional.normalize(images + 0.3 * torch.randn(12, 16), dim=-1)
    teacher = 14.0 * teacher_q @ images.t()
    student = torch.nn.Linear(16, 16)
    inputs = torch.randn(12, 16)

    def logits():
        return 14.0 * torch.nn.functional.normalize(student(inputs), dim=-1) @ images.t()

    before = kd_loss(logits(), teacher).item()
    agree_before = float((logits().argmax(1) == teacher.argmax(1)).float().mean())
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        kd_loss(logits(), teacher).backward()
        opt.step()
    after = kd_loss(logits(), teacher).item()
    agree_after = float((logits().argmax(1) == teacher.argmax(1)).float().mean())
    assert after < 0.2 * before
    assert agree_after == 1.0 > agree_before


# --- metrics --------------------------------------------------------------------------------------


def test_zero_shot_probs_softmax_over_prompt_pair():
    img = np.array([[1.0, 0.0], [0.0, 1.0]])
    present, absent = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    p = zero_shot_probs(img, present, absent, logit_scale=0.0)
    np.testing.assert_allclose(p[:, 0], [1 / (1 + np.exp(-1)), 1 / (1 + np.exp(1))])


def test_classification_report_is_the_eval_metric_in_report_shape():
    """The numbers are medlm.eval.metrics' (tested by hand in test_eval_metrics); this checks the
    report's keys and that non-finite values become None (strict JSON)."""
    import json

    from medlm.ct.evaluate import classification_report
    from medlm.eval.metrics import zero_shot_auroc_f1

    # class A: both labels in val and test; class B: J <= 0 at every val threshold (inf) and no test positives
    y_val = np.array([[0, 1], [1, 0], [0, 1], [1, 0]])
    p_val = np.array([[0.2, 0.1], [0.8, 0.9], [0.3, 0.2], [0.9, 0.8]])
    y_test = np.array([[0, 0], [1, 0], [0, 0], [1, 0]])
    p_test = np.array([[0.1, 0.3], [0.85, 0.6], [0.5, 0.2], [0.7, 0.9]])
    rep = classification_report(y_val, p_val, y_test, p_test, ["A", "B"])
    m = zero_shot_auroc_f1(p_test, y_test, p_val, y_val, class_names=["A", "B"])
    assert set(rep) == {"auroc", "f1", "precision", "accuracy", "n_scored", "per_class"}
    assert (rep["auroc"], rep["f1"], rep["precision"], rep["accuracy"], rep["n_scored"]) == (
        m["auroc_macro"],
        m["f1_macro"],
        m["precision_macro"],
        m["accuracy_macro"],
        1,
    )
    assert rep["per_class"]["A"] == m["per_class"]["A"]
    b = rep["per_class"]["B"]
    assert math.isinf(m["per_class"]["B"]["threshold"]) and math.isnan(m["per_class"]["B"]["auroc"])
    assert (b["threshold"], b["threshold_source"], b["auroc"]) == (None, "youden", None)
    json.dumps(rep, allow_nan=False)


def test_retrieval_report_keys_and_pairing():
    from medlm.ct.evaluate import retrieval_report
    from medlm.eval.metrics import recall_at_k

    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((12, 4)), rng.standard_normal((12, 4))
    r = retrieval_report(q, g)
    assert list(r) == ["R@1", "R@5", "R@10"]
    assert list(r.values()) == list(recall_at_k(q @ g.T, [1, 5, 10]).values())
    with pytest.raises(ValueError, match="pairs expected"):
        retrieval_report(q, g[:5])


def test_gap_recovered():
    # (0.705 - 0.623) / (0.716 - 0.623) = 0.082 / 0.093 = 0.8817 (the paper's 88%)
    assert gap_recovered(0.716, 0.623, 0.705) == pytest.approx(0.8817, abs=1e-4)
    assert gap_recovered(0.5, 0.5, 0.6) is None
    assert gap_recovered(None, 0.5, 0.6) is None


# --- models ---------------------------------------------------------------------------------------


def test_ct_encoder_shapes_and_roundtrip(tmp_path):
    from medlm.ct.build import CTModelSpec, build_teacher
    from medlm.ct.modeling import CTClipModel

    model, tok = build_teacher(CTModelSpec(latent_dim=16))
    enc = tok(["Cardiomegaly is present.", "No pleural effusion."], padding=True, return_tensors="pt")
    vol = torch.randn(2, *SHAPE)
    loss, img, txt = model(vol, enc["input_ids"], enc["attention_mask"])
    assert img.shape == txt.shape == (2, 16) and torch.isfinite(loss)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
    model.save_pretrained(tmp_path)
    again = CTClipModel.from_pretrained(tmp_path)
    torch.testing.assert_close(again.encode_volume(vol), model.encode_volume(vol))
    with pytest.raises(ValueError, match="divisible"):
        from medlm.ct.modeling import CTViT

        CTViT((15, 32, 32), 8, 4, 16, 1, 1, 2)


def test_speech_student_pools_only_valid_frames():
    from medlm.ct.build import CTModelSpec, build_student

    student = build_student(CTModelSpec(latent_dim=16)).eval()
    rng = np.random.default_rng(0)
    short = (0.1 * rng.standard_normal(16000 * 3)).astype(np.float32)
    long = (0.1 * rng.standard_normal(16000 * 12)).astype(np.float32)
    f = student.featurize([short, long])
    assert f["chunks"].tolist() == [1, 2] and f["frame_mask"][0].sum() == 150
    with torch.no_grad():
        both = student(*(torch.from_numpy(f[k]) for k in ("input_features", "frame_mask", "chunks")))
        alone = student(
            *(torch.from_numpy(v) for v in (f["input_features"][:1], f["frame_mask"][:1], np.array([1])))
        )
    assert both.shape == (2, 16)
    torch.testing.assert_close(both[0], alone[0])


# --- retriever ------------------------------------------------------------------------------------


def test_ct_index_roundtrip_and_queries(tmp_path):
    from medlm.ct import CTIndex
    from medlm.ct.build import CTModelSpec, build_student, build_teacher

    spec = CTModelSpec(latent_dim=16)
    teacher, tok = build_teacher(spec)
    teacher.save_pretrained(tmp_path / "run" / "teacher")
    tok.save_pretrained(tmp_path / "run" / "teacher")
    build_student(spec).save_pretrained(tmp_path / "run" / "student")
    cases = generate_ct_cases(6, SHAPE, seed=1)
    index = CTIndex.build(
        str(tmp_path / "run"),
        [c["volume"] for c in cases],
        [c["id"] for c in cases],
        [c["spacing"] for c in cases],
    )
    index.save(str(tmp_path / "index"))
    loaded = CTIndex.load(str(tmp_path / "index"))
    np.testing.assert_allclose(loaded.embeddings, index.embeddings, atol=1e-6)
    hits = loaded.search_text(cases[2]["report"], k=4)
    assert len(hits) == 4 and [h[1] for h in hits] == sorted((h[1] for h in hits), reverse=True)
    assert hits == index.search_text(cases[2]["report"], k=4)
    wav = (0.1 * np.random.default_rng(0).standard_normal(16000 * 2)).astype(np.float32)
    assert {h[0] for h in loaded.search_audio(wav, k=10)} == {c["id"] for c in cases}
    p = loaded.classify_volume(id=cases[0]["id"])
    q = loaded.classify_volume(volume=cases[0]["volume"], spacing=cases[0]["spacing"])
    assert list(p) == list(CT_RATE_CLASSES)
    np.testing.assert_allclose(list(p.values()), list(q.values()), atol=1e-5)
    assert set(loaded.classify(wav, ["Emphysema"])) == {"Emphysema"}
    with pytest.raises(ValueError, match="classify_volume"):
        loaded.classify(np.zeros((4, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="k must be"):
        loaded.search_text("x", k=0)
    with pytest.raises(FileNotFoundError):
        CTIndex.load(str(tmp_path / "run"))


@pytest.mark.parametrize("adapter_layers, per_sentence", [(0, False), (1, False), (1, True)])
def test_teacher_text_side_from_smollm2_store_dir(tmp_path, adapter_layers, per_sentence):
    """model.text_path = the SmolLM2 store entry (a decoder: LlamaModel, no pooler): frozen, mean-pooled, only
    the projections (and the text adapter, when asked for) train; the export reloads through CTEncoders with
    the same text embeddings, and training's cached text states give the embeddings the full forward gives.
    Per sentence, a report's states are its sentences' states each computed alone."""
    from medlm.models.pretrained import PARTS, model_home

    if not (model_home() / "smollm2-135m-instruct" / "config.json").exists():
        pytest.skip("smollm2-135m-instruct is not in the model store (medlm models fetch)")
    from medlm.ct.build import CTModelSpec, build_teacher
    from medlm.ct.index import CTEncoders
    from medlm.ct.job import TeacherTask
    from medlm.ct.modeling import text_inputs

    assert "smollm2-135m-instruct" in PARTS
    spec = CTModelSpec(
        latent_dim=16,
        text_path="smollm2-135m-instruct",
        text_trainable=False,
        text_pooling="mean",
        text_adapter_layers=adapter_layers,
        text_adapter_dim=32,
        text_per_sentence=per_sentence,
    )
    teacher, tok = build_teacher(spec)
    assert type(teacher.text).__name__ == "LlamaModel" and tok.pad_token is not None
    trainable = {n.split(".")[0] for n, p in teacher.named_parameters() if p.requires_grad}
    assert trainable == {"visual", "visual_proj", "text_proj", "logit_scale"} | (
        {"text_adapter"} if adapter_layers else set()
    )
    sentences = ["Findings:", "The heart is enlarged.", "Cardiomegaly is not present."]
    texts = ["Cardiomegaly is present.", " ".join(sentences)]
    enc = text_inputs(tok, texts, per_sentence=per_sentence)
    assert ("text_index" in enc) == per_sentence
    with torch.no_grad():
        emb = teacher.encode_text(**enc)
        alone = teacher.encode_text(
            **text_inputs(tok, texts[:1], per_sentence=per_sentence)
        )  # padding: no change
        states, mask = teacher.text_states(**enc)
        one_by_one = [teacher.text_states(**text_inputs(tok, [t]))[0][0] for t in sentences]
    assert emb.shape == (2, 16)
    np.testing.assert_allclose(emb[0].numpy(), alone[0].numpy(), atol=1e-4)
    if per_sentence:
        np.testing.assert_allclose(
            states[1][mask[1].bool()].numpy(), torch.cat(one_by_one).numpy(), atol=1e-4
        )
    else:  # one sequence: later sentences' states depend on what came before them
        assert int(mask[1].sum()) == len(tok(texts[1])["input_ids"])
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    loaded = CTEncoders(str(tmp_path / "teacher"))
    assert not any(p.requires_grad for p in loaded.teacher.text.parameters())
    assert loaded.teacher.config.text_per_sentence == per_sentence
    np.testing.assert_allclose(loaded.embed_texts(texts), emb.numpy(), atol=1e-4)

    # the teacher task feeds the frozen encoder's states (computed once per report, re-padded per batch)
    from medlm.ct.job import CTClipConfig

    task = TeacherTask(CTClipConfig(model=spec))
    task.model, task.tokenizer = teacher, tok
    vol = np.zeros((2, *SHAPE), dtype=np.float32)
    batch = task.collate({"report": np.array(texts, dtype=object), "volume": vol})
    assert batch["text_states"].shape[::2] == (2, teacher.config.text_config.hidden_size)
    assert len(task.states) == (
        1 + len(sentences) if per_sentence else 2
    )  # cached per sentence or per report
    assert batch["attention_mask"].sum(1).tolist() == mask.sum(1).tolist()
    with torch.no_grad():
        cached = teacher.encode_text(text_states=batch["text_states"], attention_mask=batch["attention_mask"])
    np.testing.assert_allclose(cached.numpy(), emb.numpy(), atol=1e-4)
    if (
        per_sentence
    ):  # sentence dropout: each sample is an ordered, non-empty subset of the report's sentences
        task = TeacherTask(CTClipConfig(model=spec, teacher={"sentence_keep": 0.5}))
        task.model, task.tokenizer = teacher, tok
        reports = np.array([texts[1]] * 16, dtype=object)
        batch = task.collate({"report": reports, "volume": np.zeros((16, *SHAPE), dtype=np.float32)})
        lengths = {len(x) for x in one_by_one}
        subsets = {}
        for h, m in zip(batch["text_states"], batch["attention_mask"]):
            h = h[m.bool()]
            for keep in itertools.product([0, 1], repeat=3):
                parts = [x for x, k in zip(one_by_one, keep) if k]
                if (
                    parts
                    and len(h) == sum(map(len, parts))
                    and torch.allclose(h, torch.cat(parts), atol=1e-4)
                ):
                    subsets[keep] = subsets.get(keep, 0) + 1
                    break
            else:
                raise AssertionError("a sample is not a subset of the report's sentences")
        assert len(subsets) > 1 and len(lengths) > 1, subsets
    loss, _ = task.loss(teacher, batch)
    assert torch.isfinite(loss)


def test_sentence_dropout_with_a_frozen_encoder_needs_per_sentence_states():
    from medlm.ct.job import CTClipConfig

    with pytest.raises(ValueError, match="text_per_sentence"):
        CTClipConfig(model={"text_trainable": False}, teacher={"sentence_keep": 0.5})
    CTClipConfig(model={"text_trainable": False, "text_per_sentence": True}, teacher={"sentence_keep": 0.5})
    CTClipConfig(teacher={"sentence_keep": 0.5})  # a trained encoder reads the kept sentences' text
