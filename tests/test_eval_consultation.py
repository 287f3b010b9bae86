"""The simulated patient against scripted, rule-based doctors (real deterministic functions)."""

import math
import re

import numpy as np
import pytest

from medlm.data import kb
from medlm.eval.consultation import (
    ConsultationResult,
    SimulatedPatient,
    consultation_scores,
    named_conditions,
    run_consultation,
)


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p.get("text") or p.get("transcript") or "" for p in content)


def differential_doctor(messages: list[dict]) -> str:
    """Keeps a differential over the knowledge base: conditions ranked by confirmed symptoms, minus those
    with a denied symptom; names the leader once it is unique with two confirmed symptoms, otherwise asks
    about the leader's next symptom."""
    said = " ".join(_text(m["content"]).lower() for m in messages if m["role"] == "user")
    asked, denied = [], set()
    for prev, nxt in zip(messages, messages[1:]):
        if prev["role"] == "assistant":
            m = re.match(r"Do you have (.+)\?$", prev["content"])
            if m:
                asked.append(m.group(1))
                if _text(nxt["content"]).startswith("No"):
                    denied.add(m.group(1))
    scores = {c.id: sum(s in said for s in c.symptoms) for c in kb.CONDITIONS if not denied & set(c.symptoms)}
    best = max(scores.values())
    leaders = [cid for cid, v in scores.items() if v == best]
    if len(leaders) == 1 and best >= 2:
        return f"This sounds like {kb.condition(leaders[0]).name}."
    for cid in leaders:
        for s in kb.condition(cid).symptoms:
            if s not in said and s not in asked:
                return f"Do you have {s}?"
    return "Can you tell me more?"


def vague_doctor(messages: list[dict]) -> str:
    return "I see. Please go on."


def hasty_doctor(messages: list[dict]) -> str:
    return "It is probably migraine or maybe gout."


def test_named_conditions():
    assert named_conditions("This sounds like an underactive thyroid.") == ["hypothyroidism"]
    assert named_conditions("Possibly Kidney Stones, or gout") == ["gout", "kidney_stones"]
    assert named_conditions("Type 2 diabetes is likely") == ["diabetes"]
    assert named_conditions("Do you have a fever?") == []
    assert named_conditions("Your heartburn suggests acid reflux (GERD).") == ["gerd"]


def test_patient_script():
    p = SimulatedPatient("migraine", seed=0)
    first = p.symptoms[0]
    assert first in p.opening() and p.revealed == [first]
    assert p.reply("Do you have nausea?").startswith("Yes, I have nausea")
    assert p.reply("How long has this been going on?") in (
        f"It started {p.duration} ago.",
        "Since yesterday.",
    )
    assert p.reply("Do you have a fever?") == "No, I don't have that."  # fever belongs to other conditions
    left = [s for s in p.symptoms if s not in p.revealed]
    assert left  # 3 symptoms, at most 2 revealed so far
    for s in left:
        assert p.reply("Anything else?") == f"I've also noticed {s}."
    assert p.reply("Any other symptoms?") == "No, nothing else."
    assert sorted(p.revealed) == sorted(kb.condition("migraine").symptoms)
    # the same seed gives the same patient
    assert SimulatedPatient("migraine", seed=0).symptoms == p.symptoms


def test_differential_doctor_reaches_the_diagnosis():
    # gout: symptoms sudden joint pain, swollen big toe, red hot joint (unique to gout). The opening reveals
    # one; the doctor's leaders are then {gout} alone with 1 confirmed symptom, so turn 1 asks about another
    # gout symptom ("Yes"), and turn 2 names gout: 2 turns.
    r = run_consultation(differential_doctor, "gout", max_turns=6)
    assert r.diagnosed and r.diagnosis == ["gout"] and r.turns == 2
    assert len(r.revealed) == 2
    assert [t["role"] for t in r.transcript] == ["user", "assistant", "user", "assistant"]
    assert r.transcript[-1]["text"] == "This sounds like gout."


def test_every_condition_with_the_differential_doctor():
    results = [run_consultation(differential_doctor, c.id, max_turns=8) for c in kb.CONDITIONS]
    scores = consultation_scores(results)
    assert scores["n"] == len(kb.CONDITIONS)
    assert scores["diagnosis_rate"] == 1.0  # a KB-driven doctor finds every condition
    # at least 2 turns each (one question, then the diagnosis); shared symptoms cost extra questions
    assert 2.0 <= scores["mean_turns_to_diagnosis"] <= 3.0
    assert scores["diagnosis_rate"] + scores["wrong_diagnosis_rate"] <= 1.0


def test_vague_doctor_never_diagnoses():
    r = run_consultation(vague_doctor, "asthma", max_turns=4)
    assert not r.diagnosed and r.diagnosis == [] and r.turns == 4
    # the patient volunteers its next symptom when the doctor says nothing useful: 1 + 3 replies, capped at 3
    assert sorted(r.revealed) == sorted(kb.condition("asthma").symptoms)
    scores = consultation_scores([r])
    assert scores["diagnosis_rate"] == 0.0 and scores["mean_turns"] == 4.0
    assert math.isnan(scores["mean_turns_to_diagnosis"])


def test_naming_two_conditions_is_not_a_diagnosis():
    right = run_consultation(hasty_doctor, "migraine", max_turns=5)
    assert right.turns == 1 and right.diagnosis == ["gout", "migraine"] and not right.diagnosed
    scores = consultation_scores([right, run_consultation(differential_doctor, "gout")])
    # 1 of 2 right; 1 of 2 wrong; mean turns (1 + 2) / 2
    assert (scores["diagnosis_rate"], scores["wrong_diagnosis_rate"], scores["mean_turns"]) == (0.5, 0.5, 1.5)
    assert scores["mean_turns_to_diagnosis"] == 2.0


def test_spoken_patient_turns():
    def tone_tts(
        text: str,
    ) -> np.ndarray:  # a real (if unintelligible) synthesiser: 10 ms of tone per character
        t = np.arange(160 * len(text)) / 16000
        return (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)

    seen = []

    def doctor(messages):
        seen.append(messages[-1])
        return differential_doctor(messages)

    r = run_consultation(doctor, "gout", tts=tone_tts)
    assert r.diagnosed and r.turns == 2
    part = seen[0]["content"][0]
    assert part["type"] == "audio" and part["sampling_rate"] == 16000
    assert (
        part["audio"].shape == (160 * len(part["transcript"]),)
        and part["transcript"] == r.transcript[0]["text"]
    )


def test_input_errors():
    with pytest.raises(KeyError):
        SimulatedPatient("scurvy")
    with pytest.raises(ValueError):
        run_consultation(vague_doctor, "gout", max_turns=0)
    with pytest.raises(ValueError):
        consultation_scores([])
    assert isinstance(run_consultation(vague_doctor, kb.condition("gout"), max_turns=1), ConsultationResult)
