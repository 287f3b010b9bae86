"""The understanding tasks' answers as API objects: the prompts and parsers are ``medlm.models.prompts`` (the
ones the model was trained on); a model that answers garbage yields empty results, never an error."""

from __future__ import annotations

from medlm.models import prompts
from medlm.models.prompts import ASR_PROMPT, NER_PROMPT, SENTIMENT_PROMPT, task_messages
from medlm.serving.schemas import Entity

__all__ = [
    "ASR_PROMPT",
    "NER_PROMPT",
    "SENTIMENT_PROMPT",
    "parse_entities",
    "parse_sentiment",
    "task_messages",
]


def parse_entities(text: str) -> list[Entity]:
    """``LABEL: span`` lines (the NER answer format) with a known label; everything else is dropped."""
    return [Entity(text=span, label=label) for label, span in prompts.parse_entities(text)]


def parse_sentiment(text: str) -> str | None:
    """The single sentiment word the answer names, else None."""
    return prompts.parse_sentiment(text)
