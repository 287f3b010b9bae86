"""The task prompts the API sends to the SpeechLM (the same ones it was trained on, from ``medlm.data.schema``)
and lenient parsing of its answers: a model that answers garbage yields empty results, never an error."""

from __future__ import annotations

from typing import Any

from medlm.data import schema
from medlm.data.schema import ASR_PROMPT, NER_PROMPT, SENTIMENT_PROMPT, SYSTEM_PROMPT
from medlm.serving.schemas import Entity

__all__ = ["ASR_PROMPT", "NER_PROMPT", "SENTIMENT_PROMPT", "parse_entities", "parse_sentiment", "task_messages"]


def task_messages(prompt: str, content: dict[str, Any] | str) -> list[dict[str, Any]]:
    """A training-shaped prompt: system turn, then the input (an audio part or text) and the task prompt."""
    parts = [content if isinstance(content, dict) else {"type": "text", "text": content},
             {"type": "text", "text": prompt}]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": parts}]


def parse_entities(text: str) -> list[Entity]:
    """``LABEL: span`` lines (the NER answer format) with a known label; everything else is dropped."""
    return [Entity(text=span, label=label) for label, span in schema.parse_entities(text)]


def parse_sentiment(text: str) -> str | None:
    """The single sentiment word the answer names, else None."""
    return schema.parse_sentiment(text)
