"""Zero-shot scoring and the CT-CLIP evaluation metrics (per-class AUROC, F1 at a validation-chosen
Youden-J threshold, retrieval Recall@k), on numpy arrays."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score, roc_curve

PRESENT, ABSENT = "{} is present.", "{} is not present."


def prompts(classes) -> tuple[list[str], list[str]]:
    """CT-CLIP's prompt pair per class: ``"{X} is present."`` / ``"{X} is not present."``."""
    return [PRESENT.format(c) for c in classes], [ABSENT.format(c) for c in classes]


def zero_shot_probs(image_emb: np.ndarray, present_emb: np.ndarray, absent_emb: np.ndarray,
                    logit_scale: float) -> np.ndarray:
    """P(present) per (volume, class): softmax over the (present, not present) prompt pair. -> (N, C)."""
    s = float(np.exp(logit_scale))
    pos, neg = s * image_emb @ present_emb.T, s * image_emb @ absent_emb.T
    return 1.0 / (1.0 + np.exp(neg - pos))


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (CT-CLIP's operating point)."""
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p)
    return float(min(thr[int(np.argmax(tpr - fpr))], 1.0))


def classification_report(y_val: np.ndarray, p_val: np.ndarray, y_test: np.ndarray, p_test: np.ndarray,
                          classes) -> dict:
    """Per-class AUROC and F1 on test (thresholds from validation), with macro averages over scorable classes."""
    per_class = {}
    for c, name in enumerate(classes):
        thr = youden_threshold(y_val[:, c], p_val[:, c])
        scorable = len(np.unique(y_test[:, c])) == 2
        auroc = float(roc_auc_score(y_test[:, c], p_test[:, c])) if scorable else None
        f1 = float(f1_score(y_test[:, c], p_test[:, c] >= thr, zero_division=0))
        per_class[name] = {"auroc": auroc, "f1": f1, "threshold": thr, "positives": int(y_test[:, c].sum())}
    aurocs = [v["auroc"] for v in per_class.values() if v["auroc"] is not None]
    f1s = [v["f1"] for v in per_class.values() if v["auroc"] is not None]
    return {"auroc": float(np.mean(aurocs)) if aurocs else None, "f1": float(np.mean(f1s)) if f1s else None,
            "per_class": per_class}


def recall_at_k(query_emb: np.ndarray, gallery_emb: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Query ``i`` should retrieve gallery item ``i``; the share of queries whose match is in the top k."""
    if len(query_emb) != len(gallery_emb):
        raise ValueError(f"{len(query_emb)} queries but {len(gallery_emb)} gallery items (pairs expected)")
    sims = query_emb @ gallery_emb.T
    rank = (sims > np.diag(sims)[:, None]).sum(1)  # items scored strictly above the true match
    return {f"R@{k}": float(np.mean(rank < k)) for k in ks}


def gap_recovered(teacher: float, without_kd: float, with_kd: float) -> float | None:
    """Share of the teacher - student gap that KD closes: (with - without) / (teacher - without)."""
    gap = teacher - without_kd
    return None if abs(gap) < 1e-9 else float((with_kd - without_kd) / gap)
