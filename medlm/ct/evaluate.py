"""Evaluate a ``ct_clip`` output: text teacher vs speech without KD vs speech with KD.

Zero-shot classification (CT-CLIP prompt pairs; written prompts for the teacher, the same prompts
spoken by espeak-ng for the students), per-class AUROC and F1 at the validation Youden-J threshold,
and retrieval of the test volume from its (written / spoken) report, Recall@1/5/10.
"""

from __future__ import annotations

import json
import math

import numpy as np

from medlm import storage
from medlm.ct.index import CTEncoders
from medlm.ct.metrics import gap_recovered, prompts, zero_shot_probs
from medlm.ct.preprocess import featurize_rows
from medlm.data.schema import CT_RATE_CLASSES
from medlm.eval.metrics import recall_at_k, zero_shot_auroc_f1
from medlm.models.tts import speak, voice_bank

STUDENTS = {"speech_no_kd": "student_align", "speech_kd": "student"}  # the compared students' export dirs
TRAINING_RECORD = "training.json"  # in a student's export: its phase, steps and starting weights' digest

RECALL_KS = (1, 5, 10)


def classification_report(
    y_val: np.ndarray, p_val: np.ndarray, y_test: np.ndarray, p_test: np.ndarray, classes
) -> dict:
    """:func:`medlm.eval.metrics.zero_shot_auroc_f1` (thresholds from validation, scored on test) in
    the shape ``results.json``/``results.md`` use: macro ``auroc``, ``f1``, ``precision``, ``accuracy``
    (over the classes whose test labels hold both values, ``n_scored``) and ``per_class``.

    Values that are not finite numbers are written as ``None`` so the file is strict JSON: an
    undefined AUROC or macro (no scorable class) and a Youden threshold of ``inf`` (J <= 0 at every
    threshold, nothing predicted positive; ``threshold_source`` is then ``"youden"``, not ``"default"``).
    """
    m = zero_shot_auroc_f1(p_test, y_test, p_val, y_val, class_names=list(classes))
    return _finite_or_none(
        {
            "auroc": m["auroc_macro"],
            "f1": m["f1_macro"],
            "precision": m["precision_macro"],
            "accuracy": m["accuracy_macro"],
            "n_scored": m["n_scored"],
            "per_class": m["per_class"],
        }
    )


def retrieval_report(query_emb: np.ndarray, gallery_emb: np.ndarray, ks=RECALL_KS) -> dict[str, float]:
    """Recall@k of query ``i`` retrieving gallery item ``i`` by dot product
    (:func:`medlm.eval.metrics.recall_at_k`, ties counted against the query), keyed ``"R@k"`` as in
    the report."""
    if len(query_emb) != len(gallery_emb):
        raise ValueError(f"{len(query_emb)} queries but {len(gallery_emb)} gallery items (pairs expected)")
    sims = np.asarray(query_emb, dtype=np.float64) @ np.asarray(gallery_emb, dtype=np.float64).T
    return {f"R@{k}": v for k, v in recall_at_k(sims, list(ks)).items()}


def _finite_or_none(x):
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def evaluate_exports(output: str, data_uri: str, data_spec, batch_size: int = 16) -> dict:
    """Metrics of ``output/{teacher,student_align,student}`` on the val/test rows of ``data_uri``."""
    from medlm.data import iter_rows

    teacher = CTEncoders(storage.join(output, "teacher"))
    students = {
        k: CTEncoders(storage.join(output, "teacher"), storage.join(output, export))
        for k, export in STUDENTS.items()
    }
    rows = {s: [r for r in iter_rows(data_uri) if r["split"] == s] for s in ("val", "test")}
    for s, rs in rows.items():
        if len(rs) < 2:
            raise ValueError(f"{data_uri}: the {s} split has {len(rs)} rows; need at least 2 to evaluate")
    data = {s: featurize_rows(rs, data_spec.volume) for s, rs in rows.items()}
    wavs = {s: _waveforms(rs, data_spec) for s, rs in rows.items()}
    image = {s: teacher.embed_volumes(d["volume"], batch_size) for s, d in data.items()}
    labels = {s: d["labels"].astype(int) for s, d in data.items()}

    present, absent = prompts(CT_RATE_CLASSES)
    spoken_prompts = speak(present + absent, voice_bank(1, backend="espeak")[0])
    n = len(CT_RATE_CLASSES)

    def zero_shot(prompt_emb: np.ndarray, enc: CTEncoders) -> dict:
        p = {s: zero_shot_probs(image[s], prompt_emb[:n], prompt_emb[n:], enc.logit_scale) for s in image}
        return classification_report(labels["val"], p["val"], labels["test"], p["test"], CT_RATE_CLASSES)

    results: dict = {"n_val": len(rows["val"]), "n_test": len(rows["test"]), "zero_shot": {}, "retrieval": {}}
    results["zero_shot"]["teacher_text"] = zero_shot(teacher.embed_texts(present + absent), teacher)
    results["retrieval"]["teacher_text"] = retrieval_report(
        teacher.embed_texts(list(data["test"]["report"])), image["test"]
    )
    for name, enc in students.items():
        results["zero_shot"][name] = zero_shot(enc.embed_audio(spoken_prompts), enc)
        results["retrieval"][name] = retrieval_report(enc.embed_audio(wavs["test"]), image["test"])
    z = results["zero_shot"]
    results["gap_recovered"] = {
        m: gap_recovered(z["teacher_text"][m], z["speech_no_kd"][m], z["speech_kd"][m])
        for m in ("f1", "auroc")
    }
    results["exports"] = {k: storage.join(output, k) for k in ("teacher", *STUDENTS.values())}
    records = {k: storage.join(output, export, TRAINING_RECORD) for k, export in STUDENTS.items()}
    results["training"] = {
        k: json.loads(storage.read_text(u)) for k, u in records.items() if storage.exists(u)
    }
    return results


def _waveforms(rows: list[dict], data_spec) -> list[np.ndarray]:
    from medlm.data.schema import decode_audio

    return [decode_audio(r["report_audio"], r["sample_rate"], data_spec.max_audio_seconds) for r in rows]
