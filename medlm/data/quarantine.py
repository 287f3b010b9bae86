"""Quarantine report for bad records: one JSON line per record (dataset, id, reason, detail).

Records never carry audio or transcripts, only identifiers and the reason. Writers put one small
``.jsonl`` object per batch that had bad records under a prefix (``s3://`` or local), so a clean
run writes nothing; :func:`summarize_quarantine` reads them all back.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter

from medlm import storage


def bad_record(dataset: str, record_id: str | None, reason: str, detail: str = "", source: str = "") -> dict:
    return {"dataset": dataset, "id": record_id, "reason": reason, "detail": detail, "source": source}


def write_quarantine(uri: str, records: list[dict], prefix: str = "part") -> str | None:
    """Write ``records`` as one JSON-lines object under ``uri``; returns its URI (None if nothing to
    write)."""
    if not records:
        return None
    out = storage.join(uri, f"{prefix}-{uuid.uuid4().hex[:12]}.jsonl")
    storage.write_text(out, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return out


def read_quarantine(uri: str) -> list[dict]:
    """All records under a quarantine prefix (empty when none were written)."""
    if not storage.exists(uri):
        return []
    records = []
    for f in storage.list_files(uri, suffix=".jsonl"):
        records.extend(json.loads(line) for line in storage.read_text(f).splitlines() if line.strip())
    return records


def summarize_quarantine(uri: str) -> dict:
    """``{"total", "by_reason", "by_dataset"}`` for a quarantine prefix."""
    records = read_quarantine(uri)
    return {
        "total": len(records),
        "by_reason": dict(Counter(r["reason"] for r in records).most_common()),
        "by_dataset": dict(Counter(r["dataset"] for r in records).most_common()),
    }


def format_summary(summary: dict) -> str:
    if not summary["total"]:
        return "quarantined: 0"
    reasons = ", ".join(f"{k} {v}" for k, v in summary["by_reason"].items())
    return f"quarantined: {summary['total']} ({reasons})"
