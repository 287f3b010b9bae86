"""MedSafetyBench (Han et al., NeurIPS 2024; MIT; vendored in ``third_party/medsafetybench``, research use):
harmful medical requests with safe responses. ``train_demonstrations``: the 900 fine-tuning demonstrations
(MedSafety-Improve); ``test_requests``: the 900 held-out requests (MedSafety-Eval, 9 categories x GPT-4 /
jailbroken Llama-2 authors). The safety screen trains on the former and is scored on a sample of the latter.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from medlm import paths


def _root(root: str | Path | None) -> Path:
    path = Path(root) if root else paths.medsafetybench_dir()
    if not (path / "train").is_dir():
        raise FileNotFoundError(
            f"MedSafetyBench not found at {path} (set {paths.MEDSAFETYBENCH_ENV} to its directory: "
            "train/ft_safety_med_n900.json and test/<author>/*.csv)"
        )
    return path


def train_demonstrations(root: str | Path | None = None) -> list[dict[str, str]]:
    """``[{request, response}]``: the 900 harmful requests with GPT-4's safe responses, in file order."""
    rows = json.loads((_root(root) / "train" / "ft_safety_med_n900.json").read_text())
    return [{"request": r["instruction"].strip(), "response": r["output"].strip()} for r in rows]


def test_requests(root: str | Path | None = None) -> list[dict[str, str]]:
    """``[{request, response, category, author}]``: the 900 held-out requests, by author then category."""
    out = []
    for file in sorted((_root(root) / "test").glob("*/*.csv")):
        category = file.stem.rsplit("_", 1)[-1]
        with file.open(newline="") as f:
            for row in csv.DictReader(f):
                out.append(
                    {
                        "request": row["harmful_medical_request"].strip(),
                        "response": row["safe_response"].strip(),
                        "category": category,
                        "author": file.parent.name,
                    }
                )
    return out


def test_sample(n: int, seed: int = 0, root: str | Path | None = None) -> list[dict[str, str]]:
    """``n`` test requests drawn evenly over authors and categories (seeded)."""
    rows = test_requests(root)
    random.Random(seed).shuffle(rows)
    rows.sort(key=lambda r: (r["author"], r["category"]))
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["author"], r["category"]), []).append(r)
    picked, depth = [], 0
    while len(picked) < n and any(depth < len(g) for g in groups.values()):
        picked += [g[depth] for g in groups.values() if depth < len(g)]
        depth += 1
    return picked[:n]
