"""The task prompts the API sends to the SpeechLM (the same ones it was trained on, from ``medlm.data.schema``)
and lenient parsing of its answers: a model that answers garbage yields empty results, never an error."""

from __future__ import annotations

import re
from typing import Any

from medlm.data.schema import (
    ASR_PROMPT,
    ENTITY_LABELS,
    NER_PROMPT,
    SENTIMENT_PROMPT,
    SENTIMENTS,
    SYSTEM_PROMPT,
)
from medlm.serving.schemas import Entity

__all__ = ["ASR_PROMPT", "NER_PROMPT", "SENTIMENT_PROMPT", "parse_entities", "parse_sentiment", "task_messages"]


def task_messages(prompt: str, content: dict[str, Any] | str) -> list[dict[str, Any]]:
    """A training-shaped prompt: system turn, then the input (an audio part or text) and the task prompt."""
    parts = [content if isinstance(content, dict) else {"type": "text", "text": content},
             {"type": "text", "text": prompt}]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": parts}]


def parse_entities(text: str) -> list[Entity]:
    """``LABEL: span`` lines (the NER answer format) with a known label; everything else is dropped."""
    out = []
    for line in text.splitlines():
        label, sep, span = line.partition(":")
        label, span = label.strip().upper(), span.strip()
        if sep and label in ENTITY_LABELS and span:
            out.append(Entity(text=span, label=label))
    return out


def parse_sentiment(text: str) -> str | None:
    """The single sentiment word the answer names, else None."""
    found = {w for w in re.findall(r"[a-z]+", text.lower()) if w in SENTIMENTS}
    return found.pop() if len(found) == 1 else None
