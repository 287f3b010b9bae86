"""Multi-turn consultations with a scripted simulated patient.

The patient has one condition from the data factory's knowledge base (:mod:`medlm.data.kb`) and
follows a script: it opens with one symptom, and on each doctor turn

1. if the turn names one or more conditions, the consultation ends: that is the doctor's diagnosis;
2. if the turn asks about some of the patient's symptoms (a content word of a symptom appears, e.g.
   "any pain?" matches "ear pain"), the patient confirms them;
3. if it asks how long / since when, the patient gives the duration;
4. if it asks an open question ("anything else?", "other symptoms?"), the patient reveals the next
   symptom it has not mentioned yet;
5. if it asks only about symptoms the patient does not have, the patient denies them ("No, I don't
   have that.");
6. otherwise the patient says it is not sure and mentions the next unrevealed symptom, if any.

The doctor is any callable ``chat(messages) -> str`` taking OpenAI-style messages (see
``docs/DESIGN.md``), so a SpeechLM, a served endpoint or a scripted function can play it. With
``tts`` set, patient turns are spoken: each becomes an audio part (with its transcript).

Scores (:func:`consultation_scores`): the share of consultations where the doctor named the right
condition (and only it) before ``max_turns``, and the doctor turns taken.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from medlm.audio import SAMPLING_RATE
from medlm.data import kb
from medlm.models.prompts import SYSTEM_PROMPT

Chat = Callable[[list[dict]], str]
TTS = Callable[[str], np.ndarray]  # text -> float32 mono audio at 16 kHz

CONSULTATION_PROMPT = (
    SYSTEM_PROMPT + " A patient describes their complaint. Ask about their symptoms, one "
    "question at a time, and name the most likely condition as soon as you are confident."
)

_STOPWORDS = frozenset(
    "a an the and or of in on at to for with when after from my your any is are do does "
    "have has had been feel feeling".split()
)
_DURATION = re.compile(r"\b(how long|since when|when did|how many days|how much time|started)\b")
_OPEN = re.compile(
    r"\b(anything else|what else|other symptoms?|any other|more symptoms?|tell me more|describe|"
    r"what brings you|what seems|what is the (problem|matter)|how can i help)\b"
)


def _norm(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", (text or "").lower()).strip() + " "


def _content_words(phrase: str) -> set[str]:
    return {w for w in _norm(phrase).split() if w not in _STOPWORDS and len(w) > 2}


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def condition_aliases(c: kb.Condition) -> list[str]:
    """How a doctor may name ``c``: its name without a leading article, and its id in words
    (``"an underactive thyroid"`` -> ``"underactive thyroid"``, ``"hypothyroidism"``)."""
    name = re.sub(r"^(a|an|the) ", "", c.name.lower())
    return sorted({name, c.id.replace("_", " ").lower()}, key=len, reverse=True)


def named_conditions(text: str) -> list[str]:
    """Sorted ids of the knowledge-base conditions that ``text`` names (whole words, case-insensitive)."""
    t = _norm(text)
    return sorted(
        c.id for c in kb.CONDITIONS if any(f" {_norm(a).strip()} " in t for a in condition_aliases(c))
    )


@dataclass
class ConsultationResult:
    condition: str  # the patient's condition id
    diagnosed: bool  # the doctor named it (and no other condition) in its diagnosis turn
    diagnosis: list[str]  # condition ids named in the diagnosis turn ([] = never diagnosed)
    turns: int  # doctor turns taken (up to and including the diagnosis turn)
    revealed: list[str] = field(default_factory=list)  # symptoms the patient mentioned
    transcript: list[dict] = field(default_factory=list)  # {role, text} turns, patient = user

    def to_dict(self) -> dict:
        return {
            "condition": self.condition,
            "diagnosed": self.diagnosed,
            "diagnosis": self.diagnosis,
            "turns": self.turns,
            "revealed": self.revealed,
            "transcript": self.transcript,
        }


class SimulatedPatient:
    """The scripted patient for one condition (deterministic given ``seed``)."""

    def __init__(self, condition: str | kb.Condition, seed: int = 0):
        self.condition = kb.condition(condition) if isinstance(condition, str) else condition
        rng = random.Random(f"{self.condition.id}:{seed}")
        self.symptoms = list(self.condition.symptoms)
        rng.shuffle(self.symptoms)
        self.duration = rng.choice(kb.DURATIONS)
        self.revealed: list[str] = []
        others = {s for c in kb.CONDITIONS if c.id != self.condition.id for s in c.symptoms}
        self._other_symptoms = sorted(others - set(self.symptoms))

    def _reveal(self, symptoms: list[str]) -> None:
        self.revealed += [s for s in symptoms if s not in self.revealed]

    def _next_unrevealed(self) -> str | None:
        return next((s for s in self.symptoms if s not in self.revealed), None)

    def opening(self) -> str:
        first = self.symptoms[0]
        self._reveal([first])
        return f"Hello doctor, I have had {first} for {self.duration} and I'm worried."

    def reply(self, doctor_text: str) -> str:
        """The patient's answer to one doctor turn (rules 2-6 of the module docstring)."""
        t = _norm(doctor_text)
        words = set(t.split())
        mine = [s for s in self.symptoms if _content_words(s) & words]
        if mine:
            self._reveal(mine)
            return f"Yes, I have {_join(mine)}."
        if _DURATION.search(t):
            return (
                f"It started {self.duration} ago."
                if self.duration != "since yesterday"
                else "Since yesterday."
            )
        if _OPEN.search(t):
            nxt = self._next_unrevealed()
            if nxt is None:
                return "No, nothing else."
            self._reveal([nxt])
            return f"I've also noticed {nxt}."
        if any(_content_words(s) & words for s in self._other_symptoms):
            return "No, I don't have that."
        nxt = self._next_unrevealed()
        if nxt is None:
            return "I'm not sure. What do you think it is?"
        self._reveal([nxt])
        return f"I'm not sure what you mean. I also have {nxt}."


def _user_turn(text: str, tts: TTS | None) -> dict:
    if tts is None:
        return {"role": "user", "content": text}
    audio = np.asarray(tts(text), dtype=np.float32)
    return {
        "role": "user",
        "content": [{"type": "audio", "audio": audio, "sampling_rate": SAMPLING_RATE, "transcript": text}],
    }


def run_consultation(
    chat: Chat,
    condition: str | kb.Condition,
    max_turns: int = 6,
    seed: int = 0,
    tts: TTS | None = None,
    system_prompt: str = CONSULTATION_PROMPT,
) -> ConsultationResult:
    """Play one consultation between ``chat`` (the doctor) and a :class:`SimulatedPatient`.

    The doctor sees the whole conversation each turn. It ends at the first doctor turn naming any
    condition (correct only if it names exactly the patient's) or after ``max_turns`` doctor turns.
    """
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    patient = SimulatedPatient(condition, seed)
    opening = patient.opening()
    messages = [{"role": "system", "content": system_prompt}, _user_turn(opening, tts)]
    transcript = [{"role": "user", "text": opening}]
    diagnosis: list[str] = []
    turns = 0
    while turns < max_turns:
        answer = chat(messages)
        answer = answer if isinstance(answer, str) else str(answer)
        turns += 1
        messages.append({"role": "assistant", "content": answer})
        transcript.append({"role": "assistant", "text": answer})
        diagnosis = named_conditions(answer)
        if diagnosis or turns == max_turns:
            break
        reply = patient.reply(answer)
        messages.append(_user_turn(reply, tts))
        transcript.append({"role": "user", "text": reply})
    cid = patient.condition.id
    return ConsultationResult(
        condition=cid,
        diagnosed=diagnosis == [cid],
        diagnosis=diagnosis,
        turns=turns,
        revealed=list(patient.revealed),
        transcript=transcript,
    )


def consultation_scores(results: list[ConsultationResult]) -> dict[str, float]:
    """``diagnosis_rate`` (share diagnosed correctly), ``wrong_diagnosis_rate`` (named a wrong or
    several conditions), ``mean_turns`` (all consultations) and ``mean_turns_to_diagnosis`` (the
    correctly diagnosed ones; ``nan`` when there are none), ``mean_symptoms_revealed``, ``n``."""
    if not results:
        raise ValueError("no consultations to score")
    n = len(results)
    right = [r for r in results if r.diagnosed]
    return {
        "diagnosis_rate": len(right) / n,
        "wrong_diagnosis_rate": sum(bool(r.diagnosis) and not r.diagnosed for r in results) / n,
        "mean_turns": sum(r.turns for r in results) / n,
        "mean_turns_to_diagnosis": sum(r.turns for r in right) / len(right) if right else float("nan"),
        "mean_symptoms_revealed": sum(len(r.revealed) for r in results) / n,
        "n": n,
    }
