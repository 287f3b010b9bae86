"""Evaluate a ``ct_clip`` output: text teacher vs speech without KD vs speech with KD.

Zero-shot classification (CT-CLIP prompt pairs; written prompts for the teacher, the same prompts
spoken by espeak-ng for the students), per-class AUROC and F1 at the validation Youden-J threshold,
and retrieval of the test volume from its (written / spoken) report, Recall@1/5/10.
"""

from __future__ import annotations

import numpy as np

from medlm import storage
from medlm.ct.index import CTEncoders, speak
from medlm.ct.metrics import classification_report, gap_recovered, prompts, recall_at_k, zero_shot_probs
from medlm.ct.synth import CT_RATE_CLASSES


def evaluate_exports(output: str, data_uri: str, data_spec, batch_size: int = 16) -> dict:
    """Metrics of ``output/{teacher,student_align,student}`` on the val/test rows of ``data_uri``."""
    from medlm.ct.job import featurize_rows
    from medlm.data import iter_rows

    teacher = CTEncoders(storage.join(output, "teacher"))
    students = {"speech_no_kd": CTEncoders(storage.join(output, "teacher"), storage.join(output, "student_align")),
                "speech_kd": CTEncoders(storage.join(output, "teacher"), storage.join(output, "student"))}
    rows = {s: [r for r in iter_rows(data_uri) if r["split"] == s] for s in ("val", "test")}
    for s, rs in rows.items():
        if len(rs) < 2:
            raise ValueError(f"{data_uri}: the {s} split has {len(rs)} rows; need at least 2 to evaluate")
    data = {s: featurize_rows(rs, data_spec) for s, rs in rows.items()}
    wavs = {s: _waveforms(rs, data_spec) for s, rs in rows.items()}
    image = {s: teacher.embed_volumes(d["volume"], batch_size) for s, d in data.items()}
    labels = {s: d["labels"].astype(int) for s, d in data.items()}

    present, absent = prompts(CT_RATE_CLASSES)
    spoken_prompts = speak(present + absent)
    n = len(CT_RATE_CLASSES)

    def zero_shot(prompt_emb: np.ndarray, enc: CTEncoders) -> dict:
        p = {s: zero_shot_probs(image[s], prompt_emb[:n], prompt_emb[n:], enc.logit_scale) for s in image}
        return classification_report(labels["val"], p["val"], labels["test"], p["test"], CT_RATE_CLASSES)

    results: dict = {"n_val": len(rows["val"]), "n_test": len(rows["test"]), "zero_shot": {}, "retrieval": {}}
    results["zero_shot"]["teacher_text"] = zero_shot(teacher.embed_texts(present + absent), teacher)
    results["retrieval"]["teacher_text"] = recall_at_k(teacher.embed_texts(list(data["test"]["report"])),
                                                       image["test"])
    for name, enc in students.items():
        results["zero_shot"][name] = zero_shot(enc.embed_audio(spoken_prompts), enc)
        results["retrieval"][name] = recall_at_k(enc.embed_audio(wavs["test"]), image["test"])
    z = results["zero_shot"]
    results["gap_recovered"] = {m: gap_recovered(z["teacher_text"][m], z["speech_no_kd"][m], z["speech_kd"][m])
                                for m in ("f1", "auroc")}
    results["exports"] = {k: storage.join(output, k) for k in ("teacher", "student_align", "student")}
    return results


def _waveforms(rows: list[dict], data_spec) -> list[np.ndarray]:
    from medlm.data.schema import decode_audio

    return [decode_audio(r["report_audio"], r["sample_rate"], data_spec.max_audio_seconds) for r in rows]
