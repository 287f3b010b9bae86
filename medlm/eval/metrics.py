"""Evaluation metrics: pure functions over references and predictions (no model, no Ray).

Speech recognition
    :func:`wer`, :func:`cer` (jiwer, after :func:`normalize_text`).
Spoken language understanding (SLUE)
    :func:`parse_entities` + :func:`ner_span_f1`, :func:`parse_sentiment` + :func:`sentiment_macro_f1`,
    :func:`slue_score`.
Spoken medical QA
    :func:`parse_choice` + :func:`multiple_choice_accuracy`, :func:`short_answer_scores` (SQuAD exact
    match / token F1), :func:`qa_accuracy` (either), :func:`text_retention` (before vs after).
CT
    :func:`zero_shot_auroc_f1` (per-class AUROC, F1 at a validation Youden-J threshold),
    :func:`recall_at_k` (retrieval).

Every function returns plain floats / dicts of floats (JSON-ready). Fractions are in [0, 1], except
:func:`slue_score`, which is on SLUE's 0-100 scale.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

import numpy as np

# --- text normalisation ---------------------------------------------------------------------------

_SPACES = re.compile(r"\s+")


def normalize_text(text: str | None) -> str:
    """Lowercase, delete punctuation (Unicode category P*, so ``"don't"`` -> ``"dont"`` and
    ``"iron-rich"`` -> ``"ironrich"``), collapse whitespace, strip. ``None`` -> ``""``."""
    text = (text or "").lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return _SPACES.sub(" ", text).strip()


# --- ASR ----------------------------------------------------------------------------------------------


def _check_pairs(refs: Sequence[str], hyps: Sequence[str]) -> tuple[list[str], list[str]]:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("need at least one reference")
    return [normalize_text(r) for r in refs], [normalize_text(h) for h in hyps]


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus word error rate: (substitutions + deletions + insertions) / reference words, summed
    over all pairs (not a mean of per-utterance rates), after :func:`normalize_text`.

    An empty hypothesis is all deletions (WER 1 for that pair); WER can exceed 1 with insertions.
    Raises ``ValueError`` when the references hold no words at all.
    """
    return _error_rate(refs, hyps, "words")


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus character error rate on :func:`normalize_text` output (spaces count as characters)."""
    return _error_rate(refs, hyps, "characters")


def _error_rate(refs: Sequence[str], hyps: Sequence[str], unit: str) -> float:
    """(S + D + I) / (H + S + D) over the corpus, by jiwer, in ``words`` or ``characters``."""
    import jiwer

    r, h = _check_pairs(refs, hyps)
    if not any(r):
        raise ValueError(f"the references contain no {unit} after normalisation")
    out = jiwer.process_words(r, h) if unit == "words" else jiwer.process_characters(r, h)
    errors = out.substitutions + out.deletions + out.insertions
    return errors / (out.hits + out.substitutions + out.deletions)


# --- NER (SLUE) -------------------------------------------------------------------------------------


def parse_entities(text: str | None) -> list[tuple[str, str]]:
    """``medlm.models.prompts.parse_entities``: the API's parser, so what is scored is what it returns."""
    from medlm.models.prompts import parse_entities as parse

    return parse(text)


def _distinct(items: list[tuple]) -> set[tuple]:
    """SLUE's ``make_distinct``: the n-th repeat of an item becomes ``(*item, n)`` so a multiset
    compares as a set (two gold "fever" mentions need two predicted ones)."""
    seen: Counter = Counter()
    out = set()
    for item in items:
        seen[item] += 1
        out.add((*item, seen[item]))
    return out


def _prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    precision = tp / n_pred if n_pred else (1.0 if n_gold == 0 else 0.0)
    recall = tp / n_gold if n_gold else (1.0 if n_pred == 0 else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def ner_span_f1(
    gold: Sequence[Sequence[tuple]], pred: Sequence[Sequence[tuple]], mode: str = "text"
) -> dict[str, float]:
    """Micro precision / recall / F1 of entities, pooled over utterances, as SLUE-NER scores them.

    ``gold[i]`` and ``pred[i]`` are the entities of utterance ``i``:

    * ``mode="text"`` (SLUE's F1): entities ``(label, phrase)``; a prediction is correct when the
      label and the :func:`normalize_text`-ed phrase equal a gold entity's. This works on
      generated text, where character offsets do not exist.
    * ``mode="label"`` (SLUE's label-F1): only the labels are compared (phrase ignored), so it
      rewards finding the right kinds of entity even with misrecognised words.
    * ``mode="span"``: entities ``(label, start, end)`` with exact offsets (for taggers over the
      gold transcript).

    Repeats count separately (SLUE's ``make_distinct``). Conventions for empty sets: precision is
    1 when nothing is predicted and nothing is gold, 0 when nothing is predicted but gold exists;
    recall likewise with the roles swapped; F1 is 0 when P + R = 0. So utterances with no gold and
    no predicted entities are perfect, and a prediction where no gold exists is a false positive.
    Returns ``precision``, ``recall``, ``f1``, ``tp``, ``n_pred``, ``n_gold``.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold utterances but {len(pred)} predicted")
    if mode not in ("text", "label", "span"):
        raise ValueError(f"mode must be 'text', 'label' or 'span', got {mode!r}")

    def key(e: tuple) -> tuple:
        if mode == "span":
            label, start, end = e
            return (str(label).upper(), int(start), int(end))
        label, phrase = e[0], e[1]
        return (str(label).upper(),) if mode == "label" else (str(label).upper(), normalize_text(phrase))

    tp = n_pred = n_gold = 0
    for g, p in zip(gold, pred):
        gs, ps = _distinct([key(e) for e in g]), _distinct([key(e) for e in p])
        tp += len(gs & ps)
        n_pred += len(ps)
        n_gold += len(gs)
    return {**_prf(tp, n_pred, n_gold), "tp": tp, "n_pred": n_pred, "n_gold": n_gold}


# --- sentiment --------------------------------------------------------------------------------------


def parse_sentiment(text: str | None, labels: Sequence[str]) -> str:
    """``medlm.models.prompts.parse_sentiment`` (the API's parser), with ``"invalid"`` for no single label."""
    from medlm.models.prompts import parse_sentiment as parse

    return parse(text, tuple(labels)) or "invalid"


def sentiment_macro_f1(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
    """Macro F1 over ``labels`` (scikit-learn), as SLUE-SA reports it.

    A class that occurs in neither gold nor predictions has no defined F1 and is left out of the
    mean (scikit-learn ``zero_division=nan``); a class that is predicted but never gold scores 0.
    Predictions outside ``labels`` (e.g. ``"invalid"``) are simply wrong: they are a miss for the
    gold class and a false positive for no class.
    """
    from sklearn.metrics import f1_score

    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    if not gold:
        raise ValueError("need at least one example")
    return float(f1_score(list(gold), list(pred), labels=list(labels), average="macro", zero_division=np.nan))


def slue_score(wer_value: float, ner_f1: float, sentiment_f1: float) -> float:
    """SLUE score (Shon et al., 2022): the mean of ``(1 - WER)``, NER F1 and sentiment macro F1,
    on a 0-100 scale: ``100 * ((1 - wer) + ner_f1 + sentiment_f1) / 3``. Inputs are fractions.
    As in SLUE, WER is not clipped, so WER > 1 lowers the score below what perfect NER/SA give."""
    return 100.0 * ((1.0 - wer_value) + ner_f1 + sentiment_f1) / 3.0


# --- QA ------------------------------------------------------------------------------------------------

LETTERS = string.ascii_uppercase


def parse_choice(text: str | None, options: Sequence[str] | None = None) -> str | None:
    """A multiple-choice answer -> its letter, or ``None`` when none can be read.

    Accepted, in order: a leading capital letter alone or followed by ``) . : ,`` (``"B"``, ``"(B)"``,
    ``"B."``, ``"B) aspirin"``; not ``"A migraine"``); ``"... answer is B"``;
    an option's text occurring in the answer (normalised; the longest such option when several do)."""
    raw = (text or "").strip()
    n = len(options) if options else 26
    valid = LETTERS[:n]
    m = re.match(r"^\(?([A-Z])(?:[).:,]|$)", raw)
    if m and m.group(1) in valid:
        return m.group(1)
    m = re.search(r"answer is:?\s*\(?([A-Z])(?:[).:,]|\s*$)", raw, flags=re.IGNORECASE)
    if m and m.group(1).upper() in valid and m.group(1).isupper():
        return m.group(1)
    if options:
        norm = f" {normalize_text(raw)} "
        hits = [
            (len(o), i)
            for i, o in enumerate(options)
            if normalize_text(o) and f" {normalize_text(o)} " in norm
        ]
        if hits:
            return LETTERS[max(hits)[1]]
    return None


def multiple_choice_accuracy(
    gold: Sequence[str], pred: Sequence[str], options: Sequence[Sequence[str]] | None = None
) -> float:
    """Share of questions whose :func:`parse_choice` letter equals the gold letter; an unreadable
    answer is wrong. ``options[i]`` are question ``i``'s option texts (optional)."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold answers but {len(pred)} predictions")
    if not gold:
        raise ValueError("need at least one question")
    opts = options if options is not None else [None] * len(gold)
    right = sum(parse_choice(p, o) == str(g).strip().upper() for g, p, o in zip(gold, pred, opts))
    return right / len(gold)


def squad_normalize(text: str | None) -> str:
    """SQuAD's answer normalisation: lowercase, drop punctuation and the articles a/an/the, collapse
    spaces."""
    text = (text or "").lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(gold: str, pred: str) -> float:
    g, p = squad_normalize(gold).split(), squad_normalize(pred).split()
    if not g or not p:
        return float(g == p)
    common = sum((Counter(g) & Counter(p)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def short_answer_scores(gold: Sequence[str | Sequence[str]], pred: Sequence[str]) -> dict[str, float]:
    """SQuAD v1.1 scoring: ``exact_match`` (normalised strings equal) and token ``f1`` (bag of
    normalised words), each the max over a question's gold alternatives, averaged over questions.
    ``gold[i]`` is one answer or a list of acceptable answers."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold answers but {len(pred)} predictions")
    if not gold:
        raise ValueError("need at least one question")
    em = f1 = 0.0
    for g, p in zip(gold, pred):
        alts = [g] if isinstance(g, str) else list(g)
        em += max(float(squad_normalize(a) == squad_normalize(p)) for a in alts)
        f1 += max(_token_f1(a, p) for a in alts)
    return {"exact_match": em / len(gold), "f1": f1 / len(gold)}


def rouge_l(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (longest common subsequence of SQuAD-normalised words; Lin 2004, beta = 1)."""
    if len(refs) != len(hyps) or not refs:
        raise ValueError(f"need equally many references and hypotheses, got {len(refs)} and {len(hyps)}")
    total = 0.0
    for r, h in zip(refs, hyps):
        a, b = squad_normalize(r).split(), squad_normalize(h).split()
        if not a or not b:
            total += float(a == b)
            continue
        row = [0] * (len(b) + 1)  # LCS by dynamic programming, one row at a time
        for x in a:
            prev = 0
            for j, y in enumerate(b, 1):
                prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
        lcs = row[-1]
        total += 0.0 if lcs == 0 else 2 * lcs / (len(a) + len(b))
    return total / len(refs)


def names_topic(text: str | None, topic: str) -> bool:
    """Whether ``text`` names ``topic`` (a condition, drug or symptom) as a whole phrase, normalised."""
    return f" {squad_normalize(topic)} " in f" {squad_normalize(text)} "


def fact_accuracy(keys: Sequence[str], answers: Sequence[str]) -> float:
    """The share of ``answers`` that state their fact, i.e. name its key phrase (``keys``, one per answer)."""
    if len(keys) != len(answers) or not keys:
        raise ValueError(f"need as many fact keys as answers (>0), got {len(keys)} and {len(answers)}")
    return sum(names_topic(a, k) for a, k in zip(answers, keys)) / len(keys)


def consistency_scores(
    text_answers: Sequence[str], answers: Sequence[str], topics: Sequence[str | None]
) -> dict[str, float | int | None]:
    """How far answers to speech agree with the same model's answers to the text of the same turns:
    token ``f1`` and ``rouge_l`` against the text answers, and ``topic_accuracy``: among the turns whose
    text answer names the turn's key entity, the share whose answer names it too (``topic_n`` turns)."""
    named = [i for i, (t, k) in enumerate(zip(text_answers, topics)) if k and names_topic(t, k)]
    return {
        "f1": short_answer_scores(list(text_answers), list(answers))["f1"],
        "rouge_l": rouge_l(text_answers, answers),
        "topic_accuracy": (sum(names_topic(answers[i], topics[i]) for i in named) / len(named))
        if named
        else None,
        "topic_n": len(named),
    }


def qa_accuracy(
    gold: Sequence,
    pred: Sequence[str],
    kind: str = "short_answer",
    options: Sequence[Sequence[str]] | None = None,
) -> dict[str, float]:
    """QA accuracy for ``kind="multiple_choice"`` (``{"accuracy"}``, see
    :func:`multiple_choice_accuracy`) or ``kind="short_answer"`` (``{"accuracy"}`` = exact match,
    plus ``exact_match`` and ``f1``, see :func:`short_answer_scores`)."""
    if kind == "multiple_choice":
        return {"accuracy": multiple_choice_accuracy(gold, pred, options)}
    if kind == "short_answer":
        s = short_answer_scores(gold, pred)
        return {"accuracy": s["exact_match"], **s}
    raise ValueError(f"kind must be 'multiple_choice' or 'short_answer', got {kind!r}")


def text_retention(before: float, after: float) -> dict[str, float]:
    """Text-only retention: the same text questions scored before and after speech training.
    ``delta = after - before`` (negative = forgetting); ``ratio = after / before`` (1 = fully
    retained; ``nan`` when ``before`` is 0)."""
    return {
        "before": float(before),
        "after": float(after),
        "delta": float(after - before),
        "ratio": float(after / before) if before else float("nan"),
    }


# --- retrieval -----------------------------------------------------------------------------------------


def recall_at_k(similarity, k: int | Sequence[int], targets: Sequence[int] | None = None) -> dict[int, float]:
    """Retrieval Recall@k: the share of queries (rows of ``similarity``, queries x candidates) whose
    correct candidate is among the ``k`` highest-scoring ones.

    The correct candidate of query ``i`` is ``targets[i]``, by default ``i`` (paired data, e.g.
    report ``i`` <-> volume ``i``). Ties are counted against the query: the rank of the correct
    candidate is the number of *other* candidates scoring at least as high. This is the conservative
    choice (and the one used everywhere in medlm, CT included): counting ties in the query's favour
    would give a collapsed encoder (every embedding equal, a constant matrix) a perfect R@1, and
    would let a model gain recall by producing ties. Returns ``{k: recall}`` for each requested
    ``k`` (integer keys; the CT report renames them ``"R@k"``).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] == 0:
        raise ValueError(f"similarity must be a non-empty 2-D matrix, got shape {sim.shape}")
    tgt = np.arange(sim.shape[0]) if targets is None else np.asarray(targets, dtype=np.int64)
    if tgt.shape != (sim.shape[0],) or tgt.min() < 0 or tgt.max() >= sim.shape[1]:
        raise ValueError("targets must give one valid candidate column per query")
    correct = sim[np.arange(sim.shape[0]), tgt][:, None]
    rank = (sim >= correct).sum(axis=1) - 1  # other candidates at least as similar
    ks = [k] if isinstance(k, int) else list(k)
    for kk in ks:
        if kk < 1:
            raise ValueError(f"k must be >= 1, got {kk}")
    return {int(kk): float((rank < kk).mean()) for kk in ks}


# --- CT zero-shot classification -------------------------------------------------------------------


def youden_threshold(scores, labels) -> float:
    """The threshold maximising Youden's J = TPR - FPR on (``scores``, 0/1 ``labels``), from the ROC
    curve (scikit-learn); predictions are positive when ``score >= threshold``. Needs both classes;
    ties in J go to the highest threshold (the first maximum along the curve).

    When J is at most 0 everywhere the best operating point is the ROC origin (TPR = FPR = 0) and
    the threshold is ``inf``: nothing is predicted positive. It is deliberately not capped (e.g. at
    1.0, as an older CT copy did): a cap only equals "nothing positive" for scores that are
    probabilities strictly below 1, while a saturated probability of exactly 1.0, or any score
    that is not a probability (logits, cosine similarities), would be predicted positive at the
    cap, i.e. a different operating point from the one J selected."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(labels), np.asarray(scores, dtype=np.float64))
    return float(thr[int(np.argmax(tpr - fpr))])


def zero_shot_auroc_f1(
    probs,
    labels,
    val_probs=None,
    val_labels=None,
    class_names: Sequence[str] | None = None,
    default_threshold: float = 0.5,
) -> dict:
    """Multi-label zero-shot scores as in CT-CLIP: per class AUROC, and F1 / precision / accuracy at
    an operating point chosen by Youden's J.

    ``probs``/``labels`` are (N, C) test scores (e.g. softmax P("X is present")) and 0/1 labels. The
    threshold of class ``c`` is the Youden-J threshold on ``val_probs``/``val_labels`` (CT-CLIP picks
    it on the evaluated set itself; pass no validation set to do the same). When a class has only
    one label value in the validation data, no ROC exists and ``default_threshold`` is used
    (recorded as ``threshold_source: "default"``). When the test labels of a class hold only one
    value its AUROC is undefined (``nan``).

    Every macro average is over the same classes: the *scored* ones, whose test labels hold both
    values (``n_scored`` of them; ``nan`` when there are none). Per-class values are still reported
    for all classes. F1 is averaged over these classes too, not over all classes, because a class
    with no test positives has F1 (and precision) 0 whatever the model does (no true positive is
    possible), so counting it only drags every model's mean down by the share of such classes and
    says nothing about detection; averaging AUROC and F1 over one class set also keeps the two
    macros (and comparisons such as CT's gap recovered) about the same findings.

    Returns ``{"per_class": {name: {auroc, f1, precision, accuracy, threshold, threshold_source,
    positives}}, "auroc_macro", "f1_macro", "precision_macro", "accuracy_macro", "n_scored"}``.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_score, roc_auc_score

    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if p.ndim == 1:
        p, y = p[:, None], y[:, None]
    if p.shape != y.shape or p.shape[0] == 0:
        raise ValueError(f"probs {p.shape} and labels {y.shape} must be the same non-empty (N, C) shape")
    if (val_probs is None) != (val_labels is None):
        raise ValueError("give both val_probs and val_labels, or neither")
    vp, vy = (
        (p, y) if val_probs is None else (np.asarray(val_probs, np.float64), np.asarray(val_labels, np.int64))
    )
    if vp.ndim == 1:
        vp, vy = vp[:, None], vy[:, None]
    if vp.shape[1] != p.shape[1] or vy.shape != vp.shape:
        raise ValueError("validation scores must have the same classes as the test scores")
    names = list(class_names) if class_names is not None else [str(c) for c in range(p.shape[1])]
    if len(names) != p.shape[1]:
        raise ValueError(f"{len(names)} class names for {p.shape[1]} classes")

    per_class, scored = {}, []
    for c, name in enumerate(names):
        if len(np.unique(vy[:, c])) == 2:
            thr, source = youden_threshold(vp[:, c], vy[:, c]), "youden"
        else:
            thr, source = float(default_threshold), "default"
        pred = (p[:, c] >= thr).astype(np.int64)
        both = len(np.unique(y[:, c])) == 2
        if both:
            scored.append(name)
        auroc = float(roc_auc_score(y[:, c], p[:, c])) if both else float("nan")
        per_class[name] = {
            "auroc": auroc,
            "f1": float(f1_score(y[:, c], pred, zero_division=0)),
            "precision": float(precision_score(y[:, c], pred, zero_division=0)),
            "accuracy": float(accuracy_score(y[:, c], pred)),
            "threshold": thr,
            "threshold_source": source,
            "positives": int(y[:, c].sum()),
        }

    def macro(key: str) -> float:
        return float(np.mean([per_class[n][key] for n in scored])) if scored else float("nan")

    return {
        "per_class": per_class,
        "auroc_macro": macro("auroc"),
        "f1_macro": macro("f1"),
        "precision_macro": macro("precision"),
        "accuracy_macro": macro("accuracy"),
        "n_scored": len(scored),
    }
