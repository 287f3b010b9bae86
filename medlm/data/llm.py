"""LLM backends for data synthesis: rewrite written QA into short spoken turns, and annotate text.

As in the SpeechLLM paper, entity spans and sentiment labels come from an LLM. Two backends share
one interface (:class:`LLMBackend`):

* ``rule`` (default, embedded, deterministic): lexicon matching against the knowledge base for
  entities, a phrase lexicon for sentiment, and sentence-level rewriting for spoken style;
* ``openai``: any OpenAI-compatible endpoint - a model served by medlm itself or an external one
  (``base_url`` + ``model``; the key is read from the environment variable ``api_key_env``).
"""

from __future__ import annotations

import json
import os
import re
from typing import Literal, Protocol

from medlm.config import Section
from medlm.data import kb
from medlm.models.prompts import ENTITY_LABELS, SENTIMENTS

MAX_SPOKEN_WORDS = 40


class LLMConfig(Section):
    backend: Literal["rule", "openai"] = "rule"
    base_url: str | None = None  # e.g. http://127.0.0.1:8000/v1 (medlm serve) or a hosted endpoint
    model: str = "medlm"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0


class LLMBackend(Protocol):
    def rewrite_spoken(self, question: str, answer: str) -> tuple[str, str] | None:
        """Written QA -> (spoken question, short spoken answer), or None when unsuitable for speech."""

    def annotate(self, text: str) -> dict:
        """``{"entities": [{start, end, label}], "sentiment": str}`` for ``text``."""


def spoken_ok(text: str, max_words: int = MAX_SPOKEN_WORDS) -> bool:
    """The filter: short, no markup/tables/URLs, nothing a speaker could not read aloud."""
    return (
        bool(text.strip())
        and len(text.split()) <= max_words
        and not re.search(r"[|#*_<>\[\]{}]|https?:", text)
    )


class RuleBackend:
    """Deterministic rewrite + annotation from the knowledge base lexicon."""

    NEG = ("worried", "scared", "terrible", "awful", "afraid")
    POS = ("better", "relieved", "thank", "improving", "good news")

    def __init__(self) -> None:
        self.lexicon = kb.lexicon()

    def rewrite_spoken(self, question: str, answer: str) -> tuple[str, str] | None:
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", answer) if s.strip()]
        # Keep the first sentence that carries content (skip pleasantries), drop markup and caveats.
        keep = [
            s
            for s in sentences
            if not s.lower().startswith(("thank you", "please note", "if symptoms")) and spoken_ok(s)
        ]
        if not keep:
            return None
        q = question.replace("?", "").strip()
        spoken_q = f"Um, {q[0].lower()}{q[1:]}?" if len(q) > 1 else question
        spoken_a = keep[0]
        return (spoken_q, spoken_a) if spoken_ok(spoken_q) and spoken_ok(spoken_a) else None

    def annotate(self, text: str) -> dict:
        entities, taken = [], [False] * len(text)
        low = text.lower()
        for form, label in self.lexicon.items():
            for m in re.finditer(r"\b" + re.escape(form.lower()) + r"\b", low):
                if not any(taken[m.start() : m.end()]):
                    entities.append({"start": m.start(), "end": m.end(), "label": label})
                    taken[m.start() : m.end()] = [True] * (m.end() - m.start())
        neg = sum(w in low for w in self.NEG)
        pos = sum(w in low for w in self.POS)
        sentiment = "negative" if neg > pos else "positive" if pos > neg else "neutral"
        return {"entities": sorted(entities, key=lambda e: e["start"]), "sentiment": sentiment}


class OpenAIBackend:
    """Rewrite and annotate through an OpenAI-compatible chat endpoint (JSON answers, validated)."""

    def __init__(self, cfg: LLMConfig):
        from openai import OpenAI

        if not cfg.base_url:
            raise ValueError("llm.backend=openai needs llm.base_url (e.g. http://127.0.0.1:8000/v1)")
        self.cfg = cfg
        self.client = OpenAI(
            base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env, "none"), timeout=cfg.timeout_s
        )

    def _json(self, prompt: str) -> dict | None:
        r = self.client.chat.completions.create(
            model=self.cfg.model,
            temperature=0.0,
            messages=[
                {"role": "system", "content": "Answer with one JSON object only."},
                {"role": "user", "content": prompt},
            ],
        )
        text = (r.choices[0].message.content or "").strip()
        m = re.search(r"\{.*\}", text, re.DOTALL)
        try:
            return json.loads(m.group(0)) if m else None
        except json.JSONDecodeError:
            return None

    def rewrite_spoken(self, question: str, answer: str) -> tuple[str, str] | None:
        out = self._json(
            "Rewrite this medical question and answer as a patient would ask it aloud and a doctor would "
            "answer in one or two short spoken sentences (no lists, no markup, "
            f"under {MAX_SPOKEN_WORDS} words). "
            'If it cannot be said naturally, answer {"skip": true}. Otherwise answer '
            '{"question": "...", "answer": "..."}.\n\n'
            f"Question: {question}\nAnswer: {answer}"
        )
        if not out or out.get("skip"):
            return None
        q, a = str(out.get("question", "")), str(out.get("answer", ""))
        return (q, a) if spoken_ok(q) and spoken_ok(a) else None

    def annotate(self, text: str) -> dict:
        out = (
            self._json(
                f"Find the medical entities (labels: {', '.join(ENTITY_LABELS)}) and the speaker's sentiment "
                f"({', '.join(SENTIMENTS)}) in the text. Answer "
                '{"entities": [{"text": "...", "label": "..."}], "sentiment": "..."}.\n\n'
                f"Text: {text}"
            )
            or {}
        )
        entities, low = [], text.lower()
        for e in out.get("entities") or []:
            span, label = str(e.get("text", "")), e.get("label")
            start = low.find(span.lower()) if span else -1
            if label in ENTITY_LABELS and start >= 0:  # keep only spans that are really in the text
                entities.append({"start": start, "end": start + len(span), "label": label})
        sentiment = out.get("sentiment") if out.get("sentiment") in SENTIMENTS else "neutral"
        return {"entities": sorted(entities, key=lambda e: e["start"]), "sentiment": sentiment}


def build_llm(cfg: LLMConfig) -> LLMBackend:
    return RuleBackend() if cfg.backend == "rule" else OpenAIBackend(cfg)
