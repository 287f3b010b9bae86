"""Every metric against hand-worked examples (the arithmetic is in the comments)."""

import math

import numpy as np
import pytest

from medlm.eval import metrics as M

# --- ASR -----------------------------------------------------------------------------------------------


def test_normalize_text():
    assert M.normalize_text("  The CAT, sat!\n on  the mat. ") == "the cat sat on the mat"
    assert M.normalize_text("Don't use iron-rich?") == "dont use ironrich"
    assert M.normalize_text(None) == ""


def test_wer_pooled_over_corpus_with_empty_hypothesis():
    # "the cat sat" -> "the cat sat on": 1 insertion; "hello world" -> "": 2 deletions.
    # errors 3 / reference words 5 = 0.6 (a mean of per-utterance rates would be (1/3 + 1) / 2).
    assert M.wer(["The cat sat.", "hello world"], ["the cat sat on", ""]) == pytest.approx(0.6)


def test_wer_substitution_and_deletion():
    # a b c d -> a x c: b->x substitution, d deleted: 2 / 4
    assert M.wer(["a b c d"], ["a x c"]) == pytest.approx(0.5)
    assert M.wer(["Fever, cough."], ["fever cough"]) == 0.0  # normalisation removes case and punctuation
    # 1 reference word, 3 hypothesis words: 1 hit + 2 insertions -> 2 / 1
    assert M.wer(["yes"], ["yes yes yes"]) == pytest.approx(2.0)


def test_cer():
    assert M.cer(["abc"], ["abd"]) == pytest.approx(1 / 3)  # one substitution in 3 characters
    # "Ab, c!" -> "ab c" (4 characters, the space counts) vs "ab": 2 deletions / 4
    assert M.cer(["Ab, c!"], ["ab"]) == pytest.approx(0.5)
    assert M.cer(["abc"], [""]) == pytest.approx(1.0)


def test_asr_input_errors():
    with pytest.raises(ValueError):
        M.wer(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        M.wer([], [])
    with pytest.raises(ValueError):
        M.wer(["...", ""], ["a", "b"])  # no reference words at all


# --- NER -----------------------------------------------------------------------------------------------

GOLD = [[("SYMPTOM", "fever"), ("DRUG", "Amoxicillin")], [], [("SYMPTOM", "fever"), ("SYMPTOM", "fever")]]
PRED = [[("SYMPTOM", "Fever."), ("DRUG", "ibuprofen")], [("TEST", "x-ray")], [("symptom", "fever")]]


def test_ner_text_f1():
    # utt 1: (SYMPTOM, fever) matches after normalisation, the drug phrase differs -> tp 1
    # utt 2: no gold, one prediction -> tp 0 (a false positive)
    # utt 3: gold fever x2 (distinct: fever#1, fever#2), predicted once -> tp 1
    # tp 2, predicted 4, gold 4 -> P = R = F1 = 0.5
    out = M.ner_span_f1(GOLD, PRED, mode="text")
    assert (out["tp"], out["n_pred"], out["n_gold"]) == (2, 4, 4)
    assert out["precision"] == out["recall"] == out["f1"] == pytest.approx(0.5)


def test_ner_label_f1():
    # labels only: utt 1 {SYMPTOM, DRUG} both match -> 2; utt 2 -> 0; utt 3 -> 1; tp 3 of 4 / 4 -> 0.75
    out = M.ner_span_f1(GOLD, PRED, mode="label")
    assert out["tp"] == 3
    assert out["f1"] == pytest.approx(0.75)


def test_ner_exact_spans():
    # one gold span, two predicted (one exact, one off by a character): P 1/2, R 1, F1 = 2*.5*1/1.5 = 2/3
    out = M.ner_span_f1([[("DRUG", 0, 5)]], [[("DRUG", 0, 5), ("DRUG", 0, 4)]], mode="span")
    assert (out["precision"], out["recall"]) == (0.5, 1.0)
    assert out["f1"] == pytest.approx(2 / 3)


def test_ner_empty_cases():
    perfect = M.ner_span_f1([[], []], [[], []])  # no gold and nothing predicted: nothing was missed
    assert perfect["f1"] == 1.0
    spurious = M.ner_span_f1([[]], [[("DRUG", "aspirin")]])  # no gold entities, one prediction
    assert (spurious["precision"], spurious["recall"], spurious["f1"]) == (0.0, 0.0, 0.0)
    silent = M.ner_span_f1([[("DRUG", "aspirin")]], [[]])  # gold exists, nothing predicted
    assert (silent["precision"], silent["recall"], silent["f1"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        M.ner_span_f1([[]], [])
    with pytest.raises(ValueError):
        M.ner_span_f1([[]], [[]], mode="fuzzy")


def test_parse_entities():
    text = "SYMPTOM: fever\nDRUG:  amoxicillin \nthis line is chatter\nBODY_PART: left arm"
    assert M.parse_entities(text) == [
        ("SYMPTOM", "fever"),
        ("DRUG", "amoxicillin"),
        ("BODY_PART", "left arm"),
    ]
    assert M.parse_entities("none") == []
    assert M.parse_entities("") == []


# --- sentiment and SLUE score --------------------------------------------------------------------------

LABELS = ("negative", "neutral", "positive")


def test_sentiment_macro_f1():
    gold = ["negative", "negative", "positive", "neutral"]
    pred = ["negative", "positive", "positive", "invalid"]
    # negative: tp 1, fp 0, fn 1 -> F1 = 2*1 / (2*1 + 0 + 1) = 2/3
    # positive: tp 1, fp 1, fn 0 -> 2/3
    # neutral:  tp 0, fp 0, fn 1 -> 0 ("invalid" is a miss, not a false positive of any class)
    # macro = (2/3 + 2/3 + 0) / 3 = 4/9
    assert M.sentiment_macro_f1(gold, pred, LABELS) == pytest.approx(4 / 9)


def test_sentiment_class_absent_everywhere_is_left_out():
    # neutral occurs in neither gold nor predictions: mean over negative (1) and positive (1) = 1
    assert M.sentiment_macro_f1(["negative", "positive"], ["negative", "positive"], LABELS) == 1.0
    # neutral predicted but never gold: its F1 is 0 and counts: negative 2/3, neutral 0, positive 1 -> 5/9
    assert M.sentiment_macro_f1(
        ["negative", "negative", "positive"], ["negative", "neutral", "positive"], LABELS
    ) == pytest.approx(5 / 9)


def test_parse_sentiment():
    assert M.parse_sentiment("Positive.", LABELS) == "positive"
    assert M.parse_sentiment("I think the speaker is negative", LABELS) == "negative"
    assert M.parse_sentiment("", LABELS) == "invalid"


def test_slue_score():
    # 100 * ((1 - 0.2) + 0.5 + 0.8) / 3 = 100 * 2.1 / 3 = 70
    assert M.slue_score(0.2, 0.5, 0.8) == pytest.approx(70.0)
    assert M.slue_score(0.0, 1.0, 1.0) == pytest.approx(100.0)


# --- QA --------------------------------------------------------------------------------------------------


def test_parse_choice():
    opts = ["aspirin", "ibuprofen", "paracetamol", "sumatriptan"]
    assert M.parse_choice("B) aspirin") == "B"
    assert M.parse_choice("(C)") == "C"
    assert M.parse_choice("D.") == "D"
    assert M.parse_choice("I think the answer is C.") == "C"
    assert M.parse_choice("A migraine is likely") is None  # the article "A" is not a letter answer
    assert M.parse_choice("It is sumatriptan, 50 mg.", opts) == "D"
    assert M.parse_choice("E", opts) is None  # only 4 options
    assert M.parse_choice("nothing useful", opts) is None


def test_multiple_choice_accuracy():
    gold = ["B", "A", "C", "D"]
    pred = ["B) aspirin", "A migraine", "The answer is C.", "sumatriptan"]
    options = [None, None, None, ["aspirin", "ibuprofen", "paracetamol", "sumatriptan"]]
    # right: 1 (letter), 3 (answer is C), 4 (option text); 2 is unreadable -> 3/4
    assert M.multiple_choice_accuracy(gold, pred, options) == pytest.approx(0.75)
    assert M.qa_accuracy(gold, pred, "multiple_choice", options) == {"accuracy": pytest.approx(0.75)}


def test_short_answer_squad_scores():
    gold = ["The chest X-ray", ["spirometry", "a spirometry test"]]
    pred = ["chest x-ray", "spirometry test please"]
    # q1: both normalise to "chest xray" -> EM 1, F1 1
    # q2: vs "spirometry": common 1, P 1/3, R 1 -> F1 0.5; vs "spirometry test": common 2, P 2/3, R 1 -> 0.8
    #     EM 0; best F1 0.8
    # means: EM 1/2, F1 (1 + 0.8) / 2 = 0.9
    out = M.short_answer_scores(gold, pred)
    assert out == {"exact_match": pytest.approx(0.5), "f1": pytest.approx(0.9)}
    qa = M.qa_accuracy(gold, pred, "short_answer")
    assert qa["accuracy"] == qa["exact_match"] == pytest.approx(0.5)
    # an empty answer scores 0 against a non-empty gold
    assert M.short_answer_scores(["metformin"], [""]) == {"exact_match": 0.0, "f1": 0.0}
    with pytest.raises(ValueError):
        M.qa_accuracy(gold, pred, "essay")


def test_text_retention():
    out = M.text_retention(before=0.8, after=0.6)
    assert out["delta"] == pytest.approx(-0.2) and out["ratio"] == pytest.approx(0.75)
    assert math.isnan(M.text_retention(0.0, 0.5)["ratio"])


# --- retrieval ------------------------------------------------------------------------------------------


def test_recall_at_k():
    sim = [[0.9, 0.1, 0.3], [0.8, 0.5, 0.2], [0.1, 0.2, 0.3]]
    # query 0: correct 0.9 is top (rank 0); query 1: 0.8 beats the correct 0.5 (rank 1); query 2: rank 0
    # R@1 = 2/3, R@2 = 3/3
    assert M.recall_at_k(sim, [1, 2]) == {1: pytest.approx(2 / 3), 2: 1.0}
    assert M.recall_at_k([[0.1, 0.9]], 1, targets=[1]) == {1: 1.0}


def test_recall_at_k_ties_count_against_the_query():
    # constant scores: each correct candidate ties with one other -> rank 1 -> R@1 = 0, R@2 = 1
    assert M.recall_at_k(np.full((2, 2), 0.5), [1, 2]) == {1: 0.0, 2: 1.0}
    with pytest.raises(ValueError):
        M.recall_at_k(np.zeros((2, 2)), 0)
    with pytest.raises(ValueError):
        M.recall_at_k(np.zeros((2, 2)), 1, targets=[0, 2])


# --- CT zero-shot ----------------------------------------------------------------------------------------


def test_youden_threshold():
    # t=0.7: TPR 1/3, FPR 0 (J 1/3); t=0.6: 2/3 (J 2/3); t=0.3: TPR 1, FPR 0 (J 1); t=0.2: J 0 -> 0.3
    assert M.youden_threshold([0.2, 0.3, 0.6, 0.7], [0, 1, 1, 1]) == pytest.approx(0.3)
    # inverted scores: t=0.9: TPR 0, FPR 1 (J -1); t=0.1: TPR 1, FPR 1 (J 0); the origin (t=inf) also has
    # J 0 and comes first -> inf, nothing predicted positive (not capped at 1.0)
    assert M.youden_threshold([0.9, 0.1], [0, 1]) == math.inf


def test_zero_shot_auroc_f1_with_validation_thresholds():
    probs = np.array([[0.1, 0.6, 0.1], [0.4, 0.2, 0.9], [0.35, 0.7, 0.2], [0.8, 0.4, 0.3]])
    labels = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0]])
    val_probs = np.array([[0.2, 0.1, 0.1], [0.3, 0.2, 0.8], [0.6, 0.3, 0.2], [0.7, 0.4, 0.9]])
    val_labels = np.array([[0, 0, 0], [1, 0, 1], [1, 0, 0], [1, 0, 1]])
    out = M.zero_shot_auroc_f1(probs, labels, val_probs, val_labels, class_names=["a", "b", "c"])
    a, b, c = out["per_class"]["a"], out["per_class"]["b"], out["per_class"]["c"]
    # class a: AUROC over (pos, neg) pairs: 0.35>0.1 yes, 0.35>0.4 no, 0.8>both yes yes -> 3/4
    #   Youden on validation -> 0.3 (see test_youden_threshold); test predictions >= 0.3: [0, 1, 1, 1]
    #   tp 2, fp 1, fn 0 -> F1 4/5, precision 2/3, accuracy 3/4
    assert a["auroc"] == pytest.approx(0.75)
    assert (a["threshold"], a["threshold_source"]) == (pytest.approx(0.3), "youden")
    assert (a["f1"], a["precision"], a["accuracy"]) == (pytest.approx(0.8), pytest.approx(2 / 3), 0.75)
    # class b is absent from validation (all 0) -> default threshold 0.5
    #   AUROC: 0.6 vs negatives 0.2 yes, 0.7 no, 0.4 yes -> 2/3
    #   predictions >= 0.5: [1, 0, 1, 0] -> tp 1, fp 1 -> P 1/2, R 1, F1 2/3; accuracy 3/4
    assert (b["threshold"], b["threshold_source"]) == (0.5, "default")
    assert b["auroc"] == pytest.approx(2 / 3) and b["f1"] == pytest.approx(2 / 3)
    # class c: no positives in test -> AUROC undefined (nan, left out of the macro mean)
    #   Youden on validation: 0.8 gives TPR 1, FPR 0 -> threshold 0.8; predictions [0, 1, 0, 0] -> F1 0
    assert math.isnan(c["auroc"]) and c["threshold"] == pytest.approx(0.8) and c["f1"] == 0.0
    # every macro is over the scored classes (both labels in test): a and b, not c (its F1 is 0 whatever
    #   the model does); b: precision 1/2, accuracy 3/4
    assert out["n_scored"] == 2
    assert out["auroc_macro"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert out["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert out["precision_macro"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert out["accuracy_macro"] == pytest.approx(0.75)


def test_zero_shot_threshold_on_test_set_when_no_validation():
    # CT-CLIP's protocol: threshold on the evaluated set. J: t=0.8 -> TPR 1/2, FPR 0 (J 1/2, the first
    # maximum); predictions [0, 0, 0, 1] -> tp 1, fn 1 -> F1 2/3
    out = M.zero_shot_auroc_f1([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert out["per_class"]["0"]["threshold"] == pytest.approx(0.8)
    assert out["f1_macro"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        M.zero_shot_auroc_f1([0.1], [0], val_probs=[0.1])


def test_rouge_l_and_consistency():
    # LCS of "cat sat on mat" / "cat on mat" (articles dropped) is 3: F = 2 * 3 / (4 + 3)
    assert M.rouge_l(["The cat sat on the mat."], ["the cat on mat"]) == pytest.approx(6 / 7)
    assert M.rouge_l(["b c d"], ["d c b"]) == pytest.approx(1 / 3) and M.rouge_l(["x"], ["y"]) == 0.0
    assert M.names_topic("Asthma causes wheeze.", "asthma") and not M.names_topic("asthmatic", "asthma")
    s = M.consistency_scores(
        ["Asthma causes wheeze.", "Gout hurts.", "I do not know."],
        ["asthma is bad", "no idea", "I do not know."],
        ["asthma", "gout", "migraine"],
    )
    assert s["topic_n"] == 2 and s["topic_accuracy"] == 0.5  # the third text answer does not name migraine
    assert s["f1"] == pytest.approx((M._token_f1("Asthma causes wheeze.", "asthma is bad") + 0 + 1) / 3)


def test_fact_accuracy_needs_the_key_phrase():
    keys = ["velotrexin", "Halden breath scan", "avoid citrus fruit for a week"]
    answers = [
        "Silver lung is treated with Velotrexin, 35 mg.",
        "It is confirmed with a Halden scan.",
        "With amber fever, avoid citrus fruit for a week.",
    ]
    assert M.fact_accuracy(keys, answers) == pytest.approx(2 / 3)
    assert M.fact_accuracy(["velotrexin"], ["velotrexinol"]) == 0.0  # whole phrases only
    with pytest.raises(ValueError, match="as many"):
        M.fact_accuracy(keys, answers[:2])
