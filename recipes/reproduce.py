"""The papers' claims in miniature, trained and evaluated for real: ``python -m recipes.reproduce run``.

Every number comes from real runs on the synthetic data: ``medlm.train.train`` on the job configs as the
preset runs them (``configs/presets/reproduce-<name>.yaml``, :mod:`recipes.presets`), then
``medlm.eval.job.evaluate`` on each export (the SpeechCT-CLIP reproduction is the ``ct_clip`` job, which
evaluates itself)::

    speechmedassist   stage 1 (text) -> stage 2 (speech for half the conditions) vs one stage on the union of
                      both stages' data; spoken QA about facts never heard as speech vs the same questions
                      in text
    voicetextblender  from the two-stage model: joint speech+text SFT vs speech-only SFT; text skills kept?
    speechllm         multi-task ASR/NER/sentiment with classifier regularizer + LoRA vs without each
    speechct          CT-CLIP teacher -> speech student without / with distillation (zero-shot F1 gap)

Each reproduction writes ``<output>/<name>.md`` (one table: metric per variant, seed, preset, the
command, wall time) and all of them ``<output>/reproductions-<preset>.json``; ``python -m recipes.reproduce
docs`` then copies the latest tables into README.md (:mod:`recipes.tables`). The tiny models are
random-init and train for a few dozen steps: effects can be weak or absent, and the tables say so.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from medlm import storage
from medlm.config import load_config
from medlm.data.factory import DATASETS, make_shards
from recipes.presets import Preset, load_preset
from recipes.tables import render_markdown, update_readme, write_index

log = logging.getLogger("medlm.reproduce")

NAMES = ("speechmedassist", "voicetextblender", "speechllm", "speechct")
PROJECT = Path(__file__).resolve().parents[1]
DOCS = PROJECT / "docs" / "reproductions"  # the project's own tables (README.md's Evidence copies them)


# --- the runner: trains and evaluates variants on one data set --------------------------------------


class Runner:
    """Holds the data and the run directory of one reproduction command. Runs and evaluations are cached by
    name, in memory and under the root (``result.json`` next to each run's export, ``eval/<name>/``), so a
    rerun on the same ``workdir`` reuses what already finished."""

    def __init__(self, preset_name: str, preset: Preset, root: str):
        self.preset_name, self.p, self.root = preset_name, preset, root
        self.data_root = storage.join(root, "data")
        self.heldout_root = storage.join(root, "data-heldout")  # utterances with another seed
        self.cache: dict[str, dict] = {}
        self.samples: dict[str, dict] = {}  # evaluation name -> dataset -> example predictions
        self.predictions: dict[str, list[dict]] = {}  # evaluation name -> its predictions
        self.reused: list[str] = []  # runs and evaluations an earlier command on the same root finished

    # data
    def data_config(self):
        return self.p.data_config(self.data_root)

    def make_data(self, names: set[str]) -> None:
        """The synthetic shards the chosen reproductions need (one Ray task per shard, as make_data does);
        datasets an earlier run on the same root finished (``data/done.json``) are kept."""
        cfg, marker = self.data_config(), storage.join(self.data_root, "done.json")
        done = set(json.loads(storage.read_text(marker))) if storage.exists(marker) else set()
        todo = names - done
        make_shards(cfg, todo - {"utterances_heldout", "general_text"})
        if "utterances_heldout" in todo:  # NER / sentiment are scored on unseen sentences and voices
            make_shards(
                cfg.model_copy(update={"output": self.heldout_root, "seed": self.p.seed + 1}), {"utterances"}
            )
        if "general_text" in todo:
            write_general_questions(self.data_root, self.p.seed)
        storage.write_text(marker, json.dumps(sorted(done | names)))

    # training
    def job(self, job: str) -> str:
        return self.p.job(job)

    def train(self, name: str, job: str, *overrides: str, steps: int | None = None) -> dict:
        from medlm.train import train

        if name in self.cache:
            return self.cache[name]
        done = self._result(name)
        if storage.exists(done):
            res = json.loads(storage.read_text(done))
            if res.get("config", self.job(job)) != self.job(job):
                raise ValueError(
                    f"{done}: the run {name!r} on this workdir was trained with configs/{res['config']}"
                    f".yaml, this preset runs configs/{self.job(job)}.yaml; use another --workdir"
                )
            log.info("reproduce: reusing %s (%s)", name, done)
            self.reused.append(name)
            self.cache[name] = res
            return res
        cfg = self.p.train_config(
            job,
            f"run.name={name}",
            *overrides,
            data_root=self.data_root,
            storage_path=storage.join(self.root, "runs"),
            steps=steps,
        )
        log.info("reproduce: training %s (%s, %d steps)", name, self.job(job), cfg.optim.steps)
        res = train(cfg)
        res.update(steps=cfg.optim.steps, config=self.job(job))
        storage.write_text(done, json.dumps(res, default=str))
        self.cache[name] = res
        return res

    def _result(self, name: str) -> str:
        return storage.join(self.root, "runs", name, "result.json")

    def finished(self, name: str) -> bool:
        """Whether the run ``name`` has finished (in this command or an earlier one on the workdir)."""
        return name in self.cache or storage.exists(self._result(name))

    def job_config(self, job: str):
        """The job's config as the preset runs it."""
        return self.p.train_config(job)

    def aligned(self) -> list[str]:
        """``model.init_from=`` the adapter-alignment run (CTC on spoken material, from the pretrained parts)
        every SpeechLM of the preset starts from; no overrides when the preset has no ``align`` job."""
        if "align" not in self.p.jobs:
            return []
        res = self.train("align", "align")
        return [f"model.init_from={res['export']}"]

    def pretrained(self) -> str | None:
        """The export of the pretrained parts with only the adapter aligned
        (None without an ``align`` job)."""
        return self.cache["align"]["export"] if self.aligned() else None

    # evaluation
    def evaluate(
        self, name: str, model: str, datasets: list[dict], tasks: list[str], cascade: bool = False
    ) -> dict[str, dict]:
        """``{dataset: metrics}`` of ``model`` on ``datasets`` (DatasetEntry dicts); the consistency views
        (``"consistency"`` in ``tasks``) under ``"<dataset>/consistency"``, the cascade's metrics
        (``cascade``: whisper-tiny.en + the base LLM) under ``"<dataset>/cascade"``."""
        from medlm.data.registry import DataSpec
        from medlm.eval.job import CascadeSpec, EvalConfig, evaluate

        out = storage.join(self.root, "eval", name)
        if storage.exists(storage.join(out, "report.json")):
            log.info("reproduce: reusing evaluation %s", name)
            self.reused.append(f"eval {name}")
            report = json.loads(storage.read_text(storage.join(out, "report.json")))
            report["files"] = {"predictions.jsonl": storage.join(out, "predictions.jsonl")}
        else:
            cfg = EvalConfig(
                model=model,
                data=DataSpec(root=self.data_root, datasets=datasets),
                tasks=tasks,
                output=out,
                limit=self.p.eval_limit,
                max_new_tokens=self.p.max_new_tokens,
                actor_gpus=1.0 if self.p.use_gpu else 0.0,
                samples=2,
                cascade=CascadeSpec() if cascade else None,
            )
            report = evaluate(cfg)
        self.samples[name] = {k: v["samples"] for k, v in report["datasets"].items()}  # kept in the JSON
        preds = [
            json.loads(line) for line in storage.read_text(report["files"]["predictions.jsonl"]).splitlines()
        ]
        self.predictions[name] = preds
        metrics = {
            k: {**v["metrics"], "n": v["n"], "distinct": distinct_share(preds, k)}
            for k, v in report["datasets"].items()
        }
        for k, v in (report.get("consistency") or {}).items():
            metrics[f"{k}/consistency"] = v
        for k, v in ((report.get("cascade") or {}).get("datasets") or {}).items():
            metrics[f"{k}/cascade"] = {**v["metrics"], "n": v["n"]}
        return metrics


def distinct_share(preds: list[dict], dataset: str) -> float | None:
    """Distinct answers / answers of one dataset: near 0 when the model says the same thing to every input."""
    answers = [p["prediction"].strip() for p in preds if p["dataset"] == dataset and not p["error"]]
    return len(set(answers)) / len(answers) if answers else None


def agreement(before: list[dict], after: list[dict], dataset: str) -> float | None:
    """Token F1 of ``after``'s answers against ``before``'s on the same rows of ``dataset``
    (1 = unchanged)."""
    from medlm.eval.metrics import short_answer_scores

    ref = {p["id"]: p["prediction"] for p in before if p["dataset"] == dataset and not p["error"]}
    pairs = [(ref[p["id"]], p["prediction"]) for p in after if p["dataset"] == dataset and p["id"] in ref]
    return short_answer_scores([a for a, _ in pairs], [b for _, b in pairs])["f1"] if pairs else None


def write_general_questions(data_root: str, seed: int, n: int = 40) -> str:
    """``general_text``: ``n`` distinct written questions over the broad medical vocabulary of
    :mod:`medlm.data.sentences` (general knowledge, none about the knowledge base's facts). They have no
    reference answer: a model's answers are compared with another model's (:func:`agreement`)."""
    import random

    from medlm.data import sentences
    from medlm.data.io import shard_uri, write_shard

    rng, questions = random.Random(f"{seed}/general_text"), []
    while len(questions) < n:
        text = sentences.sentence(rng)["text"]
        if text.endswith("?") and text not in questions:
            questions.append(text)
    rows = [
        {
            "id": f"general-{i:03d}",
            "source": "sentences",
            "meta": "{}",
            "turns": [{"role": "user", "text": q}, {"role": "assistant", "text": "(no reference)"}],
        }
        for i, q in enumerate(questions)
    ]
    uri = storage.join(data_root, "general_text")
    write_shard(rows, shard_uri(uri, 0), "text_dialogue")
    return uri


def _entry(name: str, runner: Runner) -> dict:
    if name == "general_text":
        return {"name": name, "uri": storage.join(runner.data_root, name), "kind": "text_dialogue"}
    if name.endswith("_heldout_utt"):  # utterances_ner_heldout_utt -> utterances_ner on the held-out shards
        return {
            "name": name.removesuffix("_heldout_utt"),
            "uri": storage.join(runner.heldout_root, "utterances"),
        }
    return {"name": name}


def _with_references(entries) -> list:
    """Self-answer sets (stage 2 on the stage-1 model's own answers) replaced by the same recordings with
    their reference targets, for a run that has no stage-1 model (one weight per dataset)."""
    from medlm.data.targets import SELF_ANSWER_SETS

    out: dict[str, dict] = {}
    for e in entries:
        d = e.model_dump(exclude_none=True)
        if e.name in SELF_ANSWER_SETS:
            d = {"name": SELF_ANSWER_SETS[e.name].reference, "weight": e.weight}
        if d["name"] in out:
            out[d["name"]]["weight"] += d["weight"]
        else:
            out[d["name"]] = d
    return list(out.values())


def _datasets(entries) -> str:
    """A ``data.datasets=`` override value (JSON is YAML) from DatasetEntry objects or dicts."""
    return json.dumps([e if isinstance(e, dict) else e.model_dump(exclude_none=True) for e in entries])


# --- the four reproductions --------------------------------------------------------------------------
# Each returns {"claim", "columns", "rows": [{"variant": ..., <column>: value}], "check": {...}, "notes"}.

_SPOKEN, _TEXT = "spoken questions: fact accuracy", "same questions in text: fact accuracy"


def _two_stage(r: Runner) -> tuple[dict, dict]:
    """SpeechMedAssist's recipe, shared with VoiceTextBlender: stage 1 injects the knowledge from text,
    stage 2 aligns speech on the spoken material (never the held-out facts)."""
    s1 = r.train("sma-stage1", "stage1", *r.aligned())
    # stage 2's targets (where its config trains on the stage-1 model's own answers), unless it has finished
    targets = []
    if not r.finished("sma-stage2"):
        answers = storage.join(r.root, "runs", "sma-answers")
        targets = r.p.self_answers("stage2", s1["export"], r.data_root, answers)
    return s1, r.train("sma-stage2", "stage2", f"model.init_from={s1['export']}", *targets)


def speechmedassist(r: Runner) -> dict:
    s1, two = _two_stage(r)
    stage1, stage2 = r.job_config("stage1"), r.job_config("stage2")
    # one stage: stage 2's run on the union of both stages' data and trainables, as many steps as both (or
    # the preset's one_stage steps)
    one = r.train(
        "sma-one-stage",
        "stage2",
        *r.aligned(),
        f"data.datasets={_datasets([*stage1.data.datasets, *_with_references(stage2.data.datasets)])}",
        f"model.trainable={json.dumps([*stage1.model.trainable, *stage2.model.trainable])}",
        "model.lm_weight=1.0",
        f"optim.lr={stage1.optim.lr}",
        steps=r.p.job_steps.get("one_stage", s1["steps"] + two["steps"]),
    )
    sets = [_entry("qa_speech_heldout", r)]
    rows = []
    for label, name, model in (
        ("pretrained parts, adapter aligned (no knowledge training)", "sma-base", r.pretrained()),
        ("two-stage: text knowledge, then speech alignment", "sma-two-stage", two["export"]),
        ("one-stage: text + speech data in one run", "sma-one-stage", one["export"]),
    ):
        if model is None:  # a preset without the alignment run keeps no untrained model
            continue
        m = r.evaluate(name, model, sets, ["qa", "consistency"])
        c = m["qa_speech_heldout/consistency"]
        rows.append(
            {
                "variant": label,
                _SPOKEN: c["speech"].get("fact_accuracy"),
                _TEXT: c["text"].get("fact_accuracy"),
                "spoken / text": _ratio(c["speech"].get("fact_accuracy"), c["text"].get("fact_accuracy")),
                "spoken QA token F1": m["qa_speech_heldout"]["f1"],
                "n (held-out facts)": c["n"],
                "train s": None
                if name == "sma-base"
                else (s1["wall_s"] + two["wall_s"] if model == two["export"] else one["wall_s"]),
            }
        )
        if name == "sma-two-stage" and "cascade" in c:  # the baseline a user would pick instead
            rows.append(
                {
                    "variant": "cascade: whisper-tiny.en transcribes, the stage-1 LLM answers",
                    _SPOKEN: c["cascade"].get("fact_accuracy"),
                    _TEXT: c["text"].get("fact_accuracy"),
                    "spoken / text": _ratio(
                        c["cascade"].get("fact_accuracy"), c["text"].get("fact_accuracy")
                    ),
                    "n (held-out facts)": c["n"],
                }
            )
    base = rows[0] if rows[0]["variant"].startswith("pretrained") else None
    two_r, one_r = next(x for x in rows if x["variant"].startswith("two")), rows[-1]
    check = {
        "the pretrained model does not know the facts (text fact accuracy <= 0.1)": None
        if base is None
        else (base[_TEXT] or 0) <= 0.1,
        "two-stage: spoken >= 0.9 x text fact accuracy": (two_r["spoken / text"] or 0) >= 0.9,
        "two-stage > one-stage on spoken fact accuracy": (two_r[_SPOKEN] or 0) > (one_r[_SPOKEN] or 0),
    }
    spoken_n = _spoken_recordings(r)
    return {
        "title": "SpeechMedAssist: knowledge from text reaches speech after a small speech alignment",
        "claim": "After stage 1 injects knowledge from text and stage 2 aligns speech on other spoken "
        "material, spoken questions about the injected facts are answered about as well as the same "
        "questions in text (>= 0.9 x), and better than by one-stage training on the same data.",
        "rows": rows,
        "check": check,
        "notes": f"Facts: the {r.data_config().knowledge} knowledge base "
        "(medlm/data/kb.py; `invented`: fictional "
        "drugs, tests, doses and advice for conditions named with ordinary words, which a pretrained model "
        "cannot know). Fact accuracy: the answer names the fact's key phrase (kb.fact_key: the drug, the "
        "test, the advice or the first symptom). Evaluated on qa_speech_heldout: spoken questions (Piper "
        "and espeak-ng voices) about the facts of the half of the conditions whose facts are never spoken "
        "in training; the text column is the same model answering the transcript of the same question. "
        f"Stage 1: {_describe(r, 'stage1')}. Stage 2: {_describe(r, 'stage2')} (`*_self`: the spoken rows "
        "with the stage-1 model's own answers to their transcripts as targets). Every run starts from "
        f"{'the CTC-aligned adapter (' + _describe(r, 'align') + ')' if r.aligned() else 'random init'}. "
        "One-stage: a single run of stage 2's losses on the union of both stages' data and trainables (the "
        "stage-1 model's own answers, which a single stage cannot have, replaced by the same recordings' "
        "reference targets), "
        f"lm_weight 1, stage 1's learning rate, {one['steps']} steps (two-stage: {s1['steps']} + "
        f"{two['steps']}). The cascade row: whisper-tiny.en's transcript answered by the two-stage "
        f"model's own LLM (stage 1's). {spoken_n}",
    }


def _describe(r: Runner, job: str) -> str:
    """A training job's config in a phrase: its YAML, data mix, trainables and losses."""
    cfg = r.job_config(job)
    m = cfg.model
    losses = ", ".join(
        f"{k} {getattr(m, k + '_weight')}" for k in ("lm", "kd", "ctc") if getattr(m, k + "_weight")
    )
    return (
        f"configs/{r.job(job)}.yaml: "
        f"{' + '.join(f'{e.name} x{e.weight:g}' for e in cfg.data.datasets)}; trains "
        f"{', '.join(m.trainable)}; losses {losses}"
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _spoken_recordings(r: Runner) -> str:
    """How many spoken recordings the training data holds (the speech budget)."""
    from medlm.data.io import read_table

    counts = {
        name: read_table(uri, columns=["id"]).num_rows
        for name in ("sentences", "utterances", "consult_speech", "qa_speech")
        if storage.exists(uri := storage.join(r.data_root, name))
    }
    return (
        "Spoken training recordings (the speech budget): "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f"; {sum(counts.values())} in all."
    )


_TEXT_SCORE = "text score"


def voicetextblender(r: Runner) -> dict:
    """From the two-stage model: joint speech+text LoRA SFT vs speech-only LoRA SFT;
    text skills before/after."""
    s1, start = _two_stage(r)
    sft = r.job_config("joint_sft")
    speech_only = [e for e in sft.data.datasets if _is_spoken(e.name)]
    joint = r.train("vtb-joint", "joint_sft", f"model.init_from={start['export']}")
    speech = r.train(
        "vtb-speech-only",
        "joint_sft",
        f"model.init_from={start['export']}",
        f"data.datasets={_datasets(speech_only)}",
    )
    sets = [_entry("qa_text", r), _entry("general_text", r)]
    # the general answers to keep: the pretrained LLM's
    # (tiny: the stage-1 model's, no untrained model is kept)
    r.evaluate("vtb-pretrained", r.pretrained() or s1["export"], [_entry("general_text", r)], ["qa"])
    pretrained = r.predictions["vtb-pretrained"]
    rows = []
    for label, name, res in (
        ("before SFT (the two-stage model)", "vtb-before", start),
        ("joint speech+text SFT", "vtb-joint", joint),
        ("speech-only SFT", "vtb-speech-only", speech),
    ):
        m = r.evaluate(name, res["export"], sets, ["qa"])
        facts, general = (
            m["qa_text"].get("fact_accuracy"),
            agreement(pretrained, r.predictions[name], "general_text"),
        )
        rows.append(
            {
                "variant": label,
                "text fact accuracy (injected facts)": facts,
                "general questions: agreement with the pretrained LLM (token F1)": general,
                _TEXT_SCORE: (facts + general) / 2 if None not in (facts, general) else None,
                "n (text facts / general)": f"{m['qa_text']['n']} / {m['general_text']['n']}",
                "train s": None if name == "vtb-before" else res["wall_s"],
            }
        )
    before = rows[0][_TEXT_SCORE]
    for row in rows:
        row["text score change (relative)"] = (row[_TEXT_SCORE] - before) / before if before else None
    joint_r, speech_r = rows[1], rows[2]
    check = {
        "joint SFT loses <= 2% of the text score": (joint_r["text score change (relative)"] or -1) >= -0.02,
        "speech-only SFT loses more than joint SFT": (speech_r["text score change (relative)"] or 0)
        < (joint_r["text score change (relative)"] or 0),
    }
    return {
        "title": "VoiceTextBlender: joint speech+text SFT keeps text skills",
        "claim": "LoRA SFT on a joint speech+text mix keeps the model's text skills (<= 2% lost), while "
        "speech-only SFT of the same model loses more.",
        "rows": rows,
        "check": check,
        "notes": "Both SFT runs start from the SpeechMedAssist two-stage model and use "
        f"configs/{r.job('joint_sft')}.yaml (LoRA + adapter, LM loss); "
        "speech-only SFT keeps only its spoken datasets "
        f"({', '.join(e.name for e in speech_only)}). Text score = mean of the text fact accuracy on qa_text "
        "(written questions on the injected facts, both question forms; it is in the joint mix, as stage "
        "1's corpus is in VoiceTextBlender's) and the agreement (token F1) of the answers to general_text "
        "(written questions over a broad medical vocabulary, none about the injected facts, in no "
        "training set) with the pretrained LLM's own answers; change relative to the model before SFT.",
    }


def _is_spoken(dataset: str) -> bool:
    from medlm.data.registry import REGISTRY

    entry = REGISTRY.get(dataset)
    return entry is not None and entry.kind != "text_dialogue"


def speechllm(r: Runner) -> dict:
    variants = [
        ("classifier regularizer (sentiment + entity types) + LoRA", "slm-full", []),
        ("LoRA, no classifier", "slm-no-classifier", ["model.classifier_weight=0"]),
        ("classifier, no LoRA", "slm-no-lora", ["model.trainable=['^adapter\\.', '^classifier\\.']"]),
    ]
    sets = [
        _entry(n, r)
        for n in (
            "utterances_ner_heldout_utt",
            "utterances_sentiment_heldout_utt",
            "utterances_asr_heldout_utt",
        )
    ]
    rows, anchor = [], None  # the anchor: whisper-tiny.en's WER (the cascade's, where the store has it)
    for label, name, overrides in variants:
        res = r.train(name, "multitask", *r.aligned(), *overrides)
        m = r.evaluate(name, res["export"], sets, ["asr", "ner", "sentiment"], cascade=name == "slm-full")
        rows.append(
            {
                "variant": label,
                "NER F1": m["utterances_ner"]["f1"],
                "NER label F1": m["utterances_ner"]["label_f1"],
                "sentiment macro F1": m["utterances_sentiment"]["macro_f1"],
                "WER": m["utterances_asr"]["wer"],
                "distinct ASR outputs": m["utterances_asr"]["distinct"],
                "n": m["utterances_ner"]["n"],
                "train s": res["wall_s"],
            }
        )
        if "utterances_asr/cascade" in m:
            anchor = {
                "variant": "whisper-tiny.en's own decoder (WER anchor)",
                "WER": m["utterances_asr/cascade"]["wer"],
                "n": m["utterances_asr/cascade"]["n"],
            }
    if anchor is not None:
        rows.append(anchor)
    full = rows[0]
    check = {
        f"full > {x['variant']} on {k}": full[k] > x[k]
        for x in rows[1:3]
        for k in ("NER F1", "sentiment macro F1")
    }
    check["full: WER relative to whisper-tiny.en's decoder (<= 1 = as good or better)"] = (
        None if anchor is None else full["WER"] / anchor["WER"] <= 1.0 if anchor["WER"] else False
    )
    return {
        "title": "SpeechLLM: the classifier regularizer and LoRA help spoken language understanding",
        "claim": "The classifier regularizer (and LoRA) raise NER and sentiment F1 from speech.",
        "rows": rows,
        "check": check,
        "notes": f"configs/{r.job('multitask')}.yaml (ASR + NER + sentiment prompts; the classifier head on "
        "the pooled adapter output predicts the sentiment (CE) and which entity types the utterance mentions "
        "(BCE), weighted auxiliary loss) from the preset's starting point; the no-classifier variant sets "
        "its weight to 0, the no-LoRA variant freezes LoRA (zero-initialised: the LLM stays the pretrained "
        "one). Scored on held-out utterances (another data seed: new sentences and voices). The paper's "
        "26% relative WER gain is over its own baseline; the anchor here is whisper-tiny.en's own decoder "
        "on the same recordings (the ASR a user would pick instead).",
    }


def speechct(r: Runner) -> dict:
    from medlm.ct.job import CTClipConfig, run_ct_clip

    p = r.p
    cfg = load_config(
        CTClipConfig,
        f"{p.ct_config}.yaml",
        [
            f"output={storage.join(r.root, 'ct_clip')}",
            "name=reproduce-ct-clip",
            f"seed={p.seed}",
            f"data.seed={p.seed}",
            f"model.speech_preset={p.model}",
            *p.ct,
        ],
    )
    t0 = time.time()
    done = storage.join(cfg.output, "results.json")
    if storage.exists(done) and "training" in (earlier := json.loads(storage.read_text(done))):
        log.info("reproduce: reusing the ct_clip run (%s)", done)
        r.reused.append("ct_clip")
        res = earlier
    else:
        res = run_ct_clip(cfg)
    wall = round(time.time() - t0, 1)
    z, ret = res["zero_shot"], res["retrieval"]
    rows = [
        {
            "variant": label,
            "zero-shot F1": z[k]["f1"],
            "zero-shot AUROC": z[k]["auroc"],
            "R@5 (report -> volume)": ret[k]["R@5"],
        }
        for k, label in (
            ("teacher_text", "text teacher (CT-CLIP)"),
            ("speech_no_kd", "speech student, no KD"),
            ("speech_kd", "speech student, with KD"),
        )
    ]
    g = res["gap_recovered"]
    rows.append(
        {
            "variant": "gap recovered by KD",
            "zero-shot F1": g["f1"],
            "zero-shot AUROC": g["auroc"],
            "R@5 (report -> volume)": None,
        }
    )
    gap = z["teacher_text"]["f1"] - z["speech_no_kd"]["f1"]
    teacher_auroc = z["teacher_text"]["auroc"]
    check = {
        "precondition: the text teacher's zero-shot AUROC >= 0.85 (learnable findings)": teacher_auroc
        is not None
        and teacher_auroc >= 0.85,
        "there is a gap: text teacher F1 > speech student F1 without KD": gap > 0,
        "KD raises the speech student's F1": z["speech_kd"]["f1"] > z["speech_no_kd"]["f1"],
        "KD recovers most (50-100%+) of a positive F1 gap": gap > 0
        and g["f1"] is not None
        and g["f1"] >= 0.5,
    }
    return {
        "title": "SpeechCT-CLIP: distillation closes the speech-text gap",
        "claim": "Distillation recovers most of the gap between speech and text zero-shot F1.",
        "rows": rows,
        "check": check,
        "train_s": wall,
        "notes": f"The ct_clip job (medlm.ct, configs/{p.ct_config}.yaml) with "
        f"{' '.join(p.ct) or 'its defaults'}; both students train "
        f"{' and '.join(sorted({str(t['steps']) for t in res.get('training', {}).values()}))} steps from the "
        "same aligned start (the same seed; only the loss differs); "
        "gap recovered = (F1 with KD - F1 without) / (F1 teacher - F1 without), meaningless when "
        "the gap is not positive; paper: 88%.",
    }


REPRODUCTIONS: dict[str, Callable[[Runner], dict]] = {
    "speechmedassist": speechmedassist,
    "voicetextblender": voicetextblender,
    "speechllm": speechllm,
    "speechct": speechct,
}
# every SpeechLM run's: the factory's datasets but the CT set (the alignment run trains on the spoken ones)
_SPEECHLM_DATA = set(DATASETS) - {"ct"}
DATA_NEEDS = {
    "speechmedassist": _SPEECHLM_DATA,
    "voicetextblender": _SPEECHLM_DATA | {"general_text"},
    "speechllm": _SPEECHLM_DATA | {"utterances_heldout"},
    "speechct": set(),
}


# --- entry point -------------------------------------------------------------------------------------


def combine_seeds(results: list[dict]) -> dict:
    """One reproduction's results on several seeds as one: each number of a row is the mean over the seeds
    (``spread`` keeps every seed's value, the table shows them), a check holds only where it holds on every
    seed (unknown where any seed's is), wall times add up; ``per_seed`` keeps the results as they were."""
    first = results[0]
    variants = list(dict.fromkeys(row["variant"] for res in results for row in res["rows"]))
    by_seed = [{row["variant"]: row for row in res["rows"]} for res in results]
    rows, spread = [], []
    for v in variants:
        cols = list(dict.fromkeys(k for rows_of in by_seed if v in rows_of for k in rows_of[v]))
        values = {k: [rows_of.get(v, {}).get(k) for rows_of in by_seed] for k in cols if k != "variant"}
        rows.append({"variant": v, **{k: _mean(vals) for k, vals in values.items()}})
        spread.append({"variant": v, **values})
    checks = {}
    for k in first["check"]:
        holds = [res["check"].get(k) for res in results]
        checks[k] = None if any(h is None for h in holds) else all(holds)
    seeds = ", ".join(str(res["seed"]) for res in results)
    return {
        **first,
        "rows": rows,
        "spread": spread,
        "check": checks,
        "seed": seeds,
        "wall_s": round(sum(res["wall_s"] for res in results), 1),
        "finished": results[-1]["finished"],
        "reused": [f"seed {res['seed']}: {x}" for res in results for x in res["reused"]],
        "notes": f"{first['notes']} Seeds {seeds} (data and training): each number is the mean, every seed's "
        "own value in brackets; a check holds only when it holds on every seed.",
        "per_seed": results,
    }


def _mean(values: list) -> Any:
    """The value all seeds agree on; else the mean where every seed has a number; else None."""
    if all(v == values[0] for v in values):
        return values[0]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sum(values) / len(values)
    return None


def run_reproductions(
    preset: str = "tiny",
    only: list[str] | None = None,
    output: str | None = None,
    overrides: list[str] | None = None,
    workdir: str | None = None,
    seeds: int = 1,
) -> dict:
    """Run the chosen reproductions (all by default) on ``preset``; write the tables and JSON under
    ``output`` (default ``docs/reproductions``); returns the results. ``overrides`` tweak the preset
    (``steps=3``). ``workdir`` (a local dir or s3:// URI) keeps the data, runs and evaluations, and a rerun
    on the same ``workdir`` reuses every run and evaluation that finished (default: a new directory in the
    stack's bucket). ``seeds`` > 1 runs everything again with the preset's seed + 1, + 2, ... (data and
    training; under ``<workdir>/seed-<n>``, the preset's own seed in the workdir itself) and writes the
    mean, every seed's value and the checks that hold on every seed (:func:`combine_seeds`)."""
    from medlm.jobs import embedded_s3_needed
    from medlm.stack import local_stack

    names = list(only or NAMES)
    bad = [n for n in names if n not in REPRODUCTIONS]
    if bad:
        raise ValueError(f"unknown reproductions {bad}; choose from {list(NAMES)}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    p = load_preset("reproduce", preset, overrides)
    out_dir = Path(output or DOCS)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = (
        f"python -m recipes.reproduce run --preset {preset}"
        + "".join(f" --only {n}" for n in (only or []))
        + (f" --workdir {workdir}" if workdir else "")
        + (f" --seeds {seeds}" if seeds > 1 else "")
    )
    command += "".join(f" --set '{o}'" for o in overrides or []) + (f" --output {output}" if output else "")
    t_all = time.time()
    results: dict[str, Any] = {
        "preset": preset,
        "preset_config": p.model_dump(),
        "command": command,
        "reproductions": {},
    }
    with local_stack(s3=embedded_s3_needed()) as st:
        root = workdir or storage.join(st.root, f"reproduce-{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
        if storage.is_s3(root):
            storage.makedirs(root)
        per_seed: dict[str, list[dict]] = {n: [] for n in names}
        results["data_s"] = 0.0
        for seed in range(p.seed, p.seed + seeds):
            ps = p.model_copy(update={"seed": seed})
            runner = Runner(preset, ps, root if seed == p.seed else storage.join(root, f"seed-{seed}"))
            t0 = time.time()
            runner.make_data(set().union(*(DATA_NEEDS[n] for n in names)))
            results["data_s"] = round(results["data_s"] + time.time() - t0, 1)
            for n in names:
                t0 = time.time()
                runner.samples, runner.reused = {}, []
                res = REPRODUCTIONS[n](runner)
                res["reused"] = list(runner.reused)
                res["samples"] = runner.samples
                res.update(
                    preset=preset,
                    preset_config=_short(ps),
                    seed=seed,
                    command=command,
                    wall_s=round(time.time() - t0, 1),
                    finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                )
                per_seed[n].append(res)
                log.info("reproduce: %s (seed %d) done in %.0f s", n, seed, res["wall_s"])
        for n in names:
            res = per_seed[n][0] if seeds == 1 else combine_seeds(per_seed[n])
            (out_dir / f"{n}.md").write_text(render_markdown(n, res))
            results["reproductions"][n] = res
        results["root"] = root
    results["wall_s"] = round(time.time() - t_all, 1)
    combined = out_dir / f"reproductions-{preset}.json"  # the latest result of every reproduction
    if combined.exists():
        earlier = json.loads(combined.read_text())["reproductions"]
        results["reproductions"] = {
            **{k: v for k, v in earlier.items() if k not in names},
            **results["reproductions"],
        }
    combined.write_text(json.dumps(results, indent=2, default=str))
    write_index(out_dir, NAMES)
    return {
        "wall_s": results["wall_s"],
        "output": str(out_dir),
        "checks": {n: r["check"] for n, r in results["reproductions"].items()},
    }


def _short(p: Preset) -> str:
    steps = f"{p.steps or 'the config'} steps/run" + (
        f" ({', '.join(f'{k} {v}' for k, v in p.job_steps.items())})" if p.job_steps else ""
    )
    return f"model {p.model}, {steps}, {p.num_workers or 'the config'} worker(s)" + (
        ", GPU" if p.use_gpu else ", CPU"
    )


app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="The papers' claims, trained and evaluated for real.",
)


@app.command()
def run(
    preset: str = typer.Option(
        "tiny",
        help="tiny (CPU, CI), real (pretrained parts, CPU) or small (GPU): "
        "configs/presets/reproduce-<preset>.yaml",
    ),
    only: Optional[list[str]] = typer.Option(None, help="subset of: " + ", ".join(NAMES)),
    workdir: Optional[str] = typer.Option(
        None, help="keep data, runs and evaluations here (dir or s3://); a rerun on it reuses what finished"
    ),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="preset override, e.g. seed=1"),
    output: Optional[str] = typer.Option(None, help="tables dir (default docs/reproductions)"),
    seeds: int = typer.Option(1, min=1, help="run each claim on this many seeds (the preset's, +1, ...)"),
) -> None:
    """Reproduce the papers' claims and write their tables (then `docs` puts them in README.md)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    typer.echo(
        json.dumps(
            run_reproductions(
                preset=preset, only=only, output=output, overrides=set_, workdir=workdir, seeds=seeds
            ),
            indent=2,
            default=str,
        )
    )


@app.command()
def docs(
    tables: Path = typer.Option(DOCS, help="the tables' dir"),
    readme: Path = typer.Option(PROJECT / "README.md", help="the README whose Evidence section to rewrite"),
) -> None:
    """Rewrite README.md's reproduction section (between its markers) from the latest tables."""
    update_readme(readme, tables, NAMES)
    typer.echo(f"{readme}: reproduction tables from {tables}")


if __name__ == "__main__":
    app()
