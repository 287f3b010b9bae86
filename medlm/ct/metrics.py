"""CT-specific scoring: CT-CLIP's zero-shot prompt pairs and probabilities, and the KD gap recovered.

The metrics themselves (per-class AUROC, F1 at a validation Youden-J threshold, retrieval Recall@k)
are :func:`medlm.eval.metrics.zero_shot_auroc_f1`, :func:`~medlm.eval.metrics.youden_threshold` and
:func:`~medlm.eval.metrics.recall_at_k`; :mod:`medlm.ct.evaluate` puts them in the report's shape.
"""

from __future__ import annotations

import numpy as np

PRESENT, ABSENT = "{} is present.", "{} is not present."


def prompts(classes) -> tuple[list[str], list[str]]:
    """CT-CLIP's prompt pair per class: ``"{X} is present."`` / ``"{X} is not present."``."""
    return [PRESENT.format(c) for c in classes], [ABSENT.format(c) for c in classes]


def zero_shot_probs(
    image_emb: np.ndarray, present_emb: np.ndarray, absent_emb: np.ndarray, logit_scale: float
) -> np.ndarray:
    """P(present) per (volume, class): softmax over the (present, not present) prompt pair. -> (N, C)."""
    s = float(np.exp(logit_scale))
    pos, neg = s * image_emb @ present_emb.T, s * image_emb @ absent_emb.T
    return 1.0 / (1.0 + np.exp(neg - pos))


def gap_recovered(teacher: float | None, without_kd: float | None, with_kd: float | None) -> float | None:
    """Share of the teacher - student gap that KD closes: (with - without) / (teacher - without).
    ``None`` when the gap is (nearly) zero or any input is missing (``None``: metric undefined)."""
    if teacher is None or without_kd is None or with_kd is None:
        return None
    gap = teacher - without_kd
    return None if abs(gap) < 1e-9 else float((with_kd - without_kd) / gap)
