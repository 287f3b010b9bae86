"""The prompts a SpeechLM is trained and served with, and the parsers of its answers.

One module for both sides: the data layer writes training rows with these prompts, the API sends the
same ones, and evaluation scores exactly what the API's parsers return. Lenient parsing: a model that
answers garbage yields empty results, never an error.
"""

from __future__ import annotations

import re
from typing import Any

SYSTEM_PROMPT = "You are a careful medical assistant."
ENTITY_LABELS = ("CONDITION", "SYMPTOM", "TEST", "DRUG", "DOSAGE", "BODY_PART", "DURATION")
SENTIMENTS = ("negative", "neutral", "positive")

ASR_PROMPT = "Transcribe the audio."
NER_PROMPT = "List the medical entities in the audio, one per line as LABEL: text."
SENTIMENT_PROMPT = "What is the sentiment of the speaker? Answer negative, neutral or positive."
MULTITASK_PROMPT = ASR_PROMPT
CT_PROMPT = "Here is the radiology report of a chest CT. Which abnormalities does it describe?"


def task_messages(prompt: str, content: dict[str, Any] | str) -> list[dict[str, Any]]:
    """A training-shaped prompt: system turn, then the input (an audio part or text) and the task prompt."""
    parts = [
        content if isinstance(content, dict) else {"type": "text", "text": content},
        {"type": "text", "text": prompt},
    ]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": parts}]


def parse_entities(text: str | None) -> list[tuple[str, str]]:
    """A model's NER answer in the training format (one ``LABEL: span`` per line, or ``none``) ->
    ``[(label, span), ...]`` with known labels only; other lines are dropped."""
    out = []
    for line in (text or "").splitlines():
        label, sep, span = line.partition(":")
        label, span = label.strip().upper(), span.strip()
        if sep and label in ENTITY_LABELS and span:
            out.append((label, span))
    return out


def parse_sentiment(text: str | None, labels: tuple[str, ...] = SENTIMENTS) -> str | None:
    """The one sentiment label the answer names (case-insensitive, as a word), else None (none or several)."""
    found = {w for w in re.findall(r"[a-z]+", (text or "").lower()) if w in labels}
    return found.pop() if len(found) == 1 else None
