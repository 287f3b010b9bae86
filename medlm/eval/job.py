"""The ``evaluate`` job: distributed inference over eval shards with Ray Data, then metrics and a report.

::

    from_items(one item per shard file of every eval dataset)
    -> map_batches(read_shards)    envelope rows {dataset, kind, task, id, row} (medlm.data.pipeline.ENVELOPE)
    -> map_batches(ModelPredictor, compute=ActorPoolStrategy(num_actors), batch_size=batch_size)
              (each actor loads SpeechLM + SpeechLMProcessor from the export once, then for every row:
               row -> messages (medlm.data.schema.to_messages) -> drop the last assistant turn (the
               reference) -> processor.prepare_generation -> model.generate -> decoded text)
    -> predictions on the driver -> metrics per task (medlm.eval.metrics)

The same actors play the doctor in simulated-patient consultations (one work item per condition, see
:mod:`medlm.eval.consultation`) and, with ``baseline_model``, the same text questions answered by
the model before speech training (text retention). Written to ``output``:
``report.json``, ``report.md`` (Markdown tables), ``metrics.png`` (+ ``consultation.png``,
``retention.png``) and ``predictions.jsonl``. Works against any export written by
``save_pretrained`` (a training run's ``<run>/export``), local or ``s3://``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections import defaultdict
from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from medlm import storage
from medlm.config import Section, config_to_dict
from medlm.data.registry import DatasetEntry, DataSpec, ResolvedDataset
from medlm.eval import metrics as M

log = logging.getLogger(__name__)

Task = Literal[
    "asr", "ner", "sentiment", "slue", "qa", "findings", "retention", "consultation", "consistency"
]
ALL_TASKS: tuple[str, ...] = (
    "asr",
    "ner",
    "sentiment",
    "slue",
    "qa",
    "findings",
    "retention",
    "consultation",
    "consistency",
)
# dataset task (medlm.data.schema.TASKS) -> metric group
TASK_GROUP = {
    "asr": "asr",
    "multitask": "asr",
    "ner": "ner",
    "sentiment": "sentiment",
    "chat": "qa",
    "report": "findings",
    "spoken_report": "findings",
}
PREDICTIONS = pa.schema(
    [
        ("dataset", pa.string()),
        ("kind", pa.string()),
        ("task", pa.string()),
        ("id", pa.string()),
        ("reference", pa.string()),
        ("prediction", pa.string()),
        ("error", pa.string()),
        ("seconds", pa.float64()),
        ("views", pa.string()),
        ("fact_id", pa.string()),
    ]
)
# views (JSON, "consistency" task, spoken chat rows with transcripts): the same model's answer to the
# transcript ("text"), to whisper's transcript ("cascade", with "asr": that transcript), and the row's
# key entity ("topic", its knowledge-base condition); fact_id: the knowledge-base fact a QA row asks about
CONSULTATION = "consultation"  # kind/task/dataset of the simulated-consultation work items


class ConsultationEval(Section):
    conditions: list[str] = Field(default_factory=list)  # knowledge-base condition ids; [] = all of them
    max_turns: int = Field(default=6, ge=1)
    seed: int = 0
    spoken: bool = False  # patient turns as speech (espeak-ng TTS) instead of text
    voice: int = Field(default=0, ge=0)  # index into medlm.models.tts.voice_bank


class CascadeSpec(Section):
    """The cascade baseline: ``asr`` (a Whisper checkpoint) transcribes, ``llm`` (a text LLM) answers.
    Model store names, local dirs or s3:// URIs."""

    asr: str = "whisper-tiny.en"
    llm: str = "smollm2-135m-instruct"


class EvalConfig(Section):
    """What to evaluate, on which shards, with how many model actors, and where the report goes."""

    model: str = "s3://medlm/runs/stage2/export"  # a save_pretrained export (local dir or s3://)
    baseline_model: str | None = None  # e.g. the stage-1 export, for text retention
    data: DataSpec = Field(
        default_factory=lambda: DataSpec(
            datasets=[
                DatasetEntry(name="utterances_asr"),
                DatasetEntry(name="utterances_ner"),
                DatasetEntry(name="utterances_sentiment"),
                DatasetEntry(name="qa_speech_heldout"),
                DatasetEntry(name="qa_text"),
            ]
        )
    )
    tasks: list[Task] = Field(default_factory=lambda: list(ALL_TASKS))
    output: str = "s3://medlm/eval/stage2"
    limit: int | None = Field(default=None, ge=1)  # rows per dataset (None = all)
    batch_size: int = Field(default=8, ge=1)  # rows per generate() call
    num_actors: int = Field(default=1, ge=1)  # model replicas (Ray Data actor pool size)
    actor_cpus: float = Field(default=1.0, gt=0)
    actor_gpus: float = Field(default=0.0, ge=0)
    torch_threads: int | None = Field(default=None, ge=1)  # None = actor_cpus rounded up
    max_new_tokens: int = Field(default=64, ge=1)
    consultation: ConsultationEval = Field(default_factory=ConsultationEval)
    samples: int = Field(default=3, ge=0)  # example predictions per dataset in the report
    cascade: CascadeSpec | None = None  # also score the cascade baseline on the spoken rows
    # "consistency" task: the ASR of its cascade view (whisper transcribes, the same model answers in text);
    # None = spoken vs text view only
    consistency_asr: str | None = "whisper-tiny.en"

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        if not self.tasks:
            raise ValueError("tasks is empty")
        from medlm.data import kb

        known = {c.id for c in kb.CONDITIONS}
        bad = [c for c in self.consultation.conditions if c not in known]
        if bad:
            raise ValueError(f"unknown consultation conditions {bad}; known: {sorted(known)}")
        return self


# --- model actors ------------------------------------------------------------------------------------


class ModelPredictor:
    """Ray Data actor: loads the model once and answers every row's prompt (greedy decoding).

    ``model`` is a SpeechLM export, or with ``cascade`` (``{"asr": ..., "llm": ...}``) the cascade baseline
    :class:`medlm.models.baselines.Cascade`: Whisper transcribes, the text LLM answers; rows of the ASR
    group get Whisper's own transcript."""

    def __init__(
        self,
        model: str,
        max_new_tokens: int = 64,
        max_audio_seconds: float | None = None,
        torch_threads: int = 1,
        consultation: dict | None = None,
        cascade: dict | None = None,
        consistency: bool = False,
        consistency_asr: str | None = None,
    ):
        import torch

        torch.set_num_threads(torch_threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.cascade = None
        if cascade is not None:
            from medlm.models.baselines import Cascade

            self.cascade = Cascade(**cascade)
        else:
            from medlm.models import SpeechLM, SpeechLMProcessor

            local = storage.local_copy(model)
            self.model = SpeechLM.from_pretrained(local).to(self.device).eval()
            self.processor = SpeechLMProcessor.from_pretrained(local)
        self.max_new_tokens = max_new_tokens
        self.max_audio_seconds = max_audio_seconds
        self.consultation = ConsultationEval(**(consultation or {}))
        self.tts = _speaker(self.consultation.voice) if self.consultation.spoken else None
        self.consistency = consistency and cascade is None
        self.asr = None
        if self.consistency and consistency_asr:
            from medlm.models.baselines import WhisperASR

            self.asr = WhisperASR(consistency_asr)

    def generate(self, messages_batch: list[list[dict]], tasks: list[str] | None = None) -> list[str]:
        """Greedy answers to conversations that end on a user turn (``tasks``: each row's dataset task)."""
        if self.cascade is not None:
            return self._cascade(messages_batch, tasks or [""] * len(messages_batch))
        inputs = {k: v.to(self.device) for k, v in self.processor.prepare_generation(messages_batch).items()}
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return [t.strip() for t in self.processor.decode(out)]

    def _cascade(self, messages_batch: list[list[dict]], tasks: list[str]) -> list[str]:
        from medlm.models.baselines import audio_parts

        asr = [i for i, t in enumerate(tasks) if TASK_GROUP.get(t) == "asr"]
        rest = [i for i in range(len(tasks)) if i not in set(asr)]
        out = [""] * len(tasks)
        if asr:  # the transcript of each prompt's (last) audio part, one batched ASR call
            heard = self.cascade.asr.transcribe([audio_parts(messages_batch[i])[-1]["audio"] for i in asr])
            for i, text in zip(asr, heard):
                out[i] = text
        if rest:
            for i, a in zip(
                rest, self.cascade.generate([messages_batch[i] for i in rest], self.max_new_tokens)
            ):
                out[i] = a
        return out

    def chat(self, messages: list[dict]) -> str:
        """The ``chat(messages) -> str`` interface of :mod:`medlm.eval.consultation`."""
        return self.generate([messages])[0]

    def __call__(self, table: pa.Table) -> pa.Table:
        from medlm.data.pipeline import envelope_row
        from medlm.data.schema import BadRecord, to_messages

        # rows in input order; prompts fill the slots after generation
        out, prompts, tasks, slots = [], [], [], []
        spoken: list[tuple[int, list[dict], dict]] = []  # (row slot, prompt, row) for the consistency task
        for env in table.to_pylist():
            rec = {k: env[k] for k in ("dataset", "kind", "task", "id")}
            if env["kind"] == CONSULTATION:
                out.append({**rec, **self.consult(envelope_row(env))})
                continue
            row = envelope_row(env)
            try:
                messages, _ = to_messages(row, env["kind"], env["task"], self.max_audio_seconds)
            except BadRecord as e:
                out.append({**rec, "reference": "", "prediction": "", "error": str(e), "seconds": 0.0})
                continue
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            fact_id = json.loads(row.get("meta") or "{}").get("fact_id")
            out.append(
                {
                    **rec,
                    "reference": messages[last]["content"],
                    "prediction": "",
                    "error": "",
                    "seconds": 0.0,
                    "fact_id": fact_id,
                }
            )
            prompts.append(messages[:last])
            tasks.append(env["task"])
            slots.append(len(out) - 1)
            if self.consistency and env["task"] == "chat":
                spoken.append((len(out) - 1, messages[:last], row))
        if prompts:
            start = time.perf_counter()
            answers = self.generate(prompts, tasks)
            per_row = (time.perf_counter() - start) / len(prompts)
            for i, a in zip(slots, answers):
                out[i].update(prediction=a, seconds=per_row)
        if spoken:
            for slot, views in self._views(spoken).items():
                out[slot]["views"] = json.dumps(views)
        return pa.Table.from_pylist(out, schema=PREDICTIONS)

    def _views(self, spoken: list[tuple[int, list[dict], dict]]) -> dict[int, dict]:
        """The consistency task's views of spoken prompts whose audio parts all carry transcripts, by row
        slot: the model's answer to the transcript (``text``) and, with an ASR model, to Whisper's transcript
        (``cascade``, its words in ``asr``; one batched ASR call); the row's ``transcript`` and key entity
        (``topic``, its knowledge-base condition)."""
        from medlm.data import kb
        from medlm.models.baselines import audio_parts, with_text

        rows = [
            (slot, prompt, parts, row)
            for slot, prompt, row in spoken
            if (parts := audio_parts(prompt)) and all("transcript" in p for p in parts)
        ]
        heard = (
            iter(self.asr.transcribe([p["audio"] for _, _, parts, _ in rows for p in parts]))
            if self.asr is not None and rows
            else None
        )
        names = {c.id: c.name for c in kb.ALL_CONDITIONS}
        views, prompts = {}, []  # prompts: (slot, view name, text-view prompt)
        for slot, prompt, parts, row in rows:
            said = [p["transcript"] for p in parts]
            condition = json.loads(row.get("meta") or "{}").get("condition")
            views[slot] = {"topic": names.get(condition), "transcript": " ".join(said), "asr": None}
            prompts.append((slot, "text", with_text(prompt, said)))
            if heard is not None:
                words = [next(heard) for _ in parts]
                views[slot]["asr"] = " ".join(words)
                prompts.append((slot, "cascade", with_text(prompt, words)))
        if prompts:
            for (slot, name, _), answer in zip(
                prompts, self.generate([p for _, _, p in prompts], ["chat"] * len(prompts))
            ):
                views[slot][name] = answer
        return views

    def consult(self, item: dict) -> dict:
        """One simulated consultation with the model as the doctor; the result (JSON) is the prediction."""
        from medlm.eval.consultation import run_consultation

        start = time.perf_counter()
        r = run_consultation(
            self.chat, item["condition"], self.consultation.max_turns, self.consultation.seed, self.tts
        )
        return {
            "reference": item["condition"],
            "prediction": json.dumps(r.to_dict()),
            "error": "",
            "seconds": time.perf_counter() - start,
        }


def _speaker(voice_index: int):
    """text -> 16 kHz float32 audio in one of the data factory's espeak-ng voices."""
    from medlm.models.tts import speak, voice_bank

    voice = voice_bank(voice_index + 1, backend="espeak")[voice_index]
    return lambda text: speak([text], voice)[0]


# --- pipeline ------------------------------------------------------------------------------------------


def _threads(cfg: EvalConfig) -> int:
    return cfg.torch_threads or max(1, math.ceil(cfg.actor_cpus))


def shard_plan(datasets: list[ResolvedDataset], limit: int | None = None) -> list[dict]:
    """One work item per shard file, ``{dataset, kind, task, file, rows}``; with ``limit`` each dataset's
    first shards are read up to ``limit`` rows in all (row counts come from the Parquet footers)."""
    import pyarrow.parquet as pq

    from medlm.data.io import shard_files

    items = []
    for d in datasets:
        budget = limit
        for f in shard_files(d.uri):
            if budget is not None and budget <= 0:
                break
            rows = None
            if budget is not None:
                fs, path = storage.resolve(f)
                rows = min(budget, pq.read_metadata(path, filesystem=fs).num_rows)
                budget -= rows
            items.append(
                {
                    "dataset": d.name,
                    "kind": d.kind,
                    "task": d.task,
                    "file": f,
                    "rows": rows,
                    "condition": None,
                }
            )
    return items


def consultation_items(cfg: EvalConfig) -> list[dict]:
    """One work item per knowledge-base condition to consult about (``cfg.consultation.conditions``)."""
    from medlm.data import kb

    return [
        {
            "dataset": CONSULTATION,
            "kind": CONSULTATION,
            "task": CONSULTATION,
            "file": None,
            "rows": None,
            "condition": c,
        }
        for c in cfg.consultation.conditions or [c.id for c in kb.CONDITIONS]
    ]


def read_shards(items: pa.Table):
    """Ray Data UDF: shard work items -> envelope rows ``{dataset, kind, task, id, row}`` (the shard row
    pickled, so datasets of every schema share one stream), streamed 64 rows at a time."""
    from medlm.data.pipeline import envelope, iter_envelopes

    for item in items.to_pylist():
        if item["kind"] == CONSULTATION:
            yield envelope(
                [{"condition": item["condition"]}],
                CONSULTATION,
                CONSULTATION,
                CONSULTATION,
                ids=[item["condition"]],
            )
            continue
        yield from iter_envelopes(
            item["file"], item["dataset"], item["kind"], item["task"], limit=item["rows"]
        )


def _actors(cfg: EvalConfig) -> dict:
    import ray.data

    return dict(
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.actor_cpus,
        num_gpus=cfg.actor_gpus or None,
    )


def predict(
    cfg: EvalConfig,
    model: str | None,
    datasets: list[ResolvedDataset],
    consult: bool = False,
    cascade: dict | None = None,
) -> list[dict]:
    """Generate an answer for every row of ``datasets`` with ``model`` (Ray Data, actor pool); with
    ``consult`` the same actors also play the doctor in the simulated consultations; with ``cascade``
    the cascade baseline answers instead of ``model``."""
    import ray.data

    items = shard_plan(datasets, cfg.limit) + (consultation_items(cfg) if consult else [])
    if not items:
        return []
    ds = ray.data.from_items(items).map_batches(read_shards, batch_size=1, batch_format="pyarrow")
    ds = ds.map_batches(
        ModelPredictor,
        fn_constructor_kwargs=dict(
            model=model,
            max_new_tokens=cfg.max_new_tokens,
            max_audio_seconds=cfg.data.max_audio_seconds,
            torch_threads=_threads(cfg),
            consultation=cfg.consultation.model_dump(),
            cascade=cascade,
            consistency="consistency" in cfg.tasks,
            consistency_asr=cfg.consistency_asr,
        ),
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        **_actors(cfg),
    )
    return sorted(ds.take_all(), key=lambda r: (r["dataset"], r["id"]))


# --- metrics -------------------------------------------------------------------------------------------


def _ct_class_names() -> list[str]:
    from medlm.data.schema import CT_RATE_CLASSES

    return list(CT_RATE_CLASSES)


def _findings(text: str, names: list[str]) -> list[tuple[str, str]]:
    t = f" {M.normalize_text(text)} "
    return [(n, "") for n in names if f" {M.normalize_text(n)} " in t]


def score_dataset(task: str, preds: list[dict]) -> dict[str, float]:
    """Metrics of one dataset's predictions (rows without an error) for its task group."""
    group = TASK_GROUP[task]
    refs, hyps = [p["reference"] for p in preds], [p["prediction"] for p in preds]
    if group == "asr":
        return {"wer": M.wer(refs, hyps), "cer": M.cer(refs, hyps)}
    if group == "ner":
        gold, pred = [M.parse_entities(r) for r in refs], [M.parse_entities(h) for h in hyps]
        text, label = M.ner_span_f1(gold, pred, "text"), M.ner_span_f1(gold, pred, "label")
        return {
            "f1": text["f1"],
            "precision": text["precision"],
            "recall": text["recall"],
            "label_f1": label["f1"],
        }
    if group == "sentiment":
        from medlm.models.prompts import SENTIMENTS

        parsed = [M.parse_sentiment(h, SENTIMENTS) for h in hyps]
        return {
            "macro_f1": M.sentiment_macro_f1(refs, parsed, SENTIMENTS),
            "accuracy": sum(r == p for r, p in zip(refs, parsed)) / len(refs),
            "invalid": sum(p == "invalid" for p in parsed) / len(refs),
        }
    if group == "qa":
        return {**M.short_answer_scores(refs, hyps), **_fact_accuracy(preds, hyps)}
    if group == "findings":
        names = _ct_class_names()
        out = M.ner_span_f1([_findings(r, names) for r in refs], [_findings(h, names) for h in hyps], "label")
        return {"f1": out["f1"], "precision": out["precision"], "recall": out["recall"]}
    raise ValueError(f"no metrics for task {task!r}")


def _fact_accuracy(rows: list[dict], answers: list[str]) -> dict[str, float]:
    """``{"fact_accuracy"}``: the share of ``answers`` that state their row's knowledge-base fact (its
    :func:`medlm.data.kb.fact_key`); empty when some row asks about no fact."""
    from medlm.data import kb

    if not rows or not all(r.get("fact_id") for r in rows):
        return {}
    return {"fact_accuracy": M.fact_accuracy([kb.fact_key(r["fact_id"]) for r in rows], answers)}


def _nan_to_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def _by_dataset(preds: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for p in preds:
        out[p["dataset"]].append(p)
    return out


def build_report(
    cfg: EvalConfig,
    datasets: list[ResolvedDataset],
    preds: list[dict],
    baseline_preds: list[dict] | None = None,
    consultations: list[dict] | None = None,
    cascade_preds: list[dict] | None = None,
) -> dict:
    """All metrics as one JSON-ready dict (``nan`` becomes ``null``)."""
    from medlm.eval.consultation import ConsultationResult, consultation_scores

    report: dict = {
        "model": cfg.model,
        "baseline_model": cfg.baseline_model,
        "tasks": list(cfg.tasks),
        "datasets": {},
        "config": config_to_dict(cfg),
    }
    grouped = _by_dataset(preds)
    for d in datasets:
        rows = grouped.get(d.name, [])
        good = [r for r in rows if not r["error"]]
        entry = {
            "uri": d.uri,
            "kind": d.kind,
            "task": d.task,
            "group": TASK_GROUP[d.task],
            "n": len(good),
            "errors": len(rows) - len(good),
            "metrics": score_dataset(d.task, good) if good else {},
            "seconds_per_example": sum(r["seconds"] for r in good) / len(good) if good else None,
            "samples": [{k: r[k] for k in ("id", "reference", "prediction")} for r in good[: cfg.samples]],
        }
        report["datasets"][d.name] = entry

    def first(group: str, key: str):
        return next(
            (
                e["metrics"][key]
                for e in report["datasets"].values()
                if e["group"] == group and key in e["metrics"]
            ),
            None,
        )

    if "slue" in cfg.tasks:
        w, n, s = first("asr", "wer"), first("ner", "f1"), first("sentiment", "macro_f1")
        if None not in (w, n, s):
            report["slue"] = {"wer": w, "ner_f1": n, "sentiment_f1": s, "score": M.slue_score(w, n, s)}
    if baseline_preds is not None:
        report["retention"] = {}
        base = _by_dataset(baseline_preds)
        for d in datasets:
            good = [r for r in base.get(d.name, []) if not r["error"]]
            after = report["datasets"][d.name]["metrics"].get("f1")
            if good and after is not None:
                before = M.short_answer_scores(
                    [r["reference"] for r in good], [r["prediction"] for r in good]
                )["f1"]
                report["retention"][d.name] = {"metric": "token_f1", **M.text_retention(before, after)}
    consistency = {}
    for name, rows in grouped.items():  # spoken answers against the same model's answers to the text
        rows = [r for r in rows if r.get("views") and not r["error"]]
        if not rows:
            continue
        views = [json.loads(r["views"]) for r in rows]
        text, topics = [v["text"] for v in views], [v.get("topic") for v in views]
        entry = {
            "n": len(rows),
            "speech": {
                **M.consistency_scores(text, [r["prediction"] for r in rows], topics),
                **_fact_accuracy(rows, [r["prediction"] for r in rows]),
            },
            "text": {
                "topic_rate": sum(bool(k) and M.names_topic(t, k) for t, k in zip(text, topics)) / len(rows),
                **_fact_accuracy(rows, text),
            },
            "samples": [
                {
                    "id": r["id"],
                    "text": v["text"],
                    "speech": r["prediction"],
                    "cascade": v.get("cascade"),
                    "asr": v.get("asr"),
                }
                for r, v in list(zip(rows, views))[: cfg.samples]
            ],
        }
        if all("cascade" in v for v in views):
            entry["cascade"] = {
                **M.consistency_scores(text, [v["cascade"] for v in views], topics),
                **_fact_accuracy(rows, [v["cascade"] for v in views]),
            }
            entry["cascade"]["asr_wer"] = M.wer(
                [v["transcript"] for v in views], [v["asr"] or "" for v in views]
            )
        consistency[name] = entry
    if consistency:
        report["consistency"] = consistency
    if cascade_preds is not None:  # the baseline a user would pick instead, on the same spoken rows
        report["cascade"] = {"asr": cfg.cascade.asr, "llm": cfg.cascade.llm, "datasets": {}}
        grouped_c = _by_dataset(cascade_preds)
        for d in datasets:
            good = [r for r in grouped_c.get(d.name, []) if not r["error"]]
            if good:
                report["cascade"]["datasets"][d.name] = {
                    "n": len(good),
                    "metrics": score_dataset(d.task, good),
                    "seconds_per_example": sum(r["seconds"] for r in good) / len(good),
                    "samples": [
                        {k: r[k] for k in ("id", "reference", "prediction")} for r in good[: cfg.samples]
                    ],
                }
    if consultations is not None:
        results = [ConsultationResult(**r) for r in consultations]
        report["consultation"] = {
            **consultation_scores(results),
            "per_condition": [
                {
                    "condition": r.condition,
                    "diagnosed": r.diagnosed,
                    "diagnosis": r.diagnosis,
                    "turns": r.turns,
                }
                for r in results
            ],
            "samples": [r.transcript for r in results[: cfg.samples]],
        }
    return _nan_to_none(report)


# --- outputs -------------------------------------------------------------------------------------------


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def render_markdown(report: dict) -> str:
    """``report.md``: one table of per-dataset metrics, then SLUE, retention and consultation tables."""
    lines = [
        f"# Evaluation of `{report['model']}`",
        "",
        "| dataset | task | n | errors | metric | value |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in report["datasets"].items():
        for metric, value in (e["metrics"] or {"-": None}).items():
            lines.append(f"| {name} | {e['task']} | {e['n']} | {e['errors']} | {metric} | {_fmt(value)} |")
    if "slue" in report:
        s = report["slue"]
        lines += [
            "",
            "## SLUE",
            "",
            "| WER | NER F1 | sentiment F1 | SLUE score |",
            "|---|---|---|---|",
            f"| {_fmt(s['wer'])} | {_fmt(s['ner_f1'])} | {_fmt(s['sentiment_f1'])} | {_fmt(s['score'])} |",
        ]
    if report.get("retention"):
        lines += [
            "",
            f"## Text retention (baseline `{report['baseline_model']}`)",
            "",
            "| dataset | metric | before | after | delta | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in report["retention"].items():
            lines.append(
                f"| {name} | {r['metric']} | {_fmt(r['before'])} | {_fmt(r['after'])} | {_fmt(r['delta'])} "
                f"| {_fmt(r['ratio'])} |"
            )
    for name, c in (report.get("consistency") or {}).items():
        lines += [
            "",
            f"## Does speech work? `{name}`: answers to speech vs the same model's answers to the text",
            "",
            "| input | n | consistency F1 | ROUGE-L | topic accuracy (n) | ASR WER |",
            "|---|---|---|---|---|---|",
        ]
        for view, label in (
            ("speech", "speech (end to end)"),
            ("cascade", "cascade (whisper transcript -> same model)"),
        ):
            if view in c:
                v = c[view]
                lines.append(
                    f"| {label} | {c['n']} | {_fmt(v['f1'])} | {_fmt(v['rouge_l'])} | "
                    f"{_fmt(v['topic_accuracy'])} ({v['topic_n']}) | {_fmt(v.get('asr_wer'))} |"
                )
        lines.append(
            f"| text (upper bound) | {c['n']} | 1.0000 | 1.0000 | 1.0000 (names it in "
            f"{_fmt(c['text']['topic_rate'])} of turns) | - |"
        )
    if report.get("cascade"):
        c = report["cascade"]
        lines += [
            "",
            f"## Cascade baseline (`{c['asr']}` transcribes, `{c['llm']}` answers), same rows",
            "",
            "| dataset | n | metric | cascade | model |",
            "|---|---|---|---|---|",
        ]
        for name, e in c["datasets"].items():
            mine = report["datasets"].get(name, {}).get("metrics", {})
            for metric, value in e["metrics"].items():
                lines.append(f"| {name} | {e['n']} | {metric} | {_fmt(value)} | {_fmt(mine.get(metric))} |")
    if "consultation" in report:
        c = report["consultation"]
        lines += [
            "",
            "## Simulated consultations",
            "",
            "| consultations | diagnosis rate | wrong diagnosis rate | "
            "mean turns | mean turns to diagnosis |",
            "|---|---|---|---|---|",
            f"| {c['n']} | {_fmt(c['diagnosis_rate'])} | {_fmt(c['wrong_diagnosis_rate'])} | "
            f"{_fmt(c['mean_turns'])} | {_fmt(c['mean_turns_to_diagnosis'])} |",
        ]
    return "\n".join(lines) + "\n"


def render_plots(report: dict) -> dict[str, bytes]:
    """PNG plots (matplotlib, Agg): ``metrics.png`` always; ``consultation.png`` / ``retention.png`` when
    run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()

    bars = [
        (f"{name}: {m}", v)
        for name, e in report["datasets"].items()
        for m, v in e["metrics"].items()
        if isinstance(v, (int, float))
    ]
    if "slue" in report:
        bars.append(("SLUE score / 100", report["slue"]["score"] / 100))
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(bars), 2) + 1))
    ax.barh([b[0] for b in bars][::-1], [b[1] for b in bars][::-1], color="tab:blue")
    ax.set_xlabel("value (WER/CER: lower is better; others: higher is better)")
    ax.set_title(f"medlm evaluation: {report['model']}", fontsize=9)
    out = {"metrics.png": png(fig)}
    if "consultation" in report:
        per = report["consultation"]["per_condition"]
        fig, ax = plt.subplots(figsize=(7, 0.3 * max(len(per), 2) + 1))
        ax.barh(
            [p["condition"] for p in per][::-1],
            [p["turns"] for p in per][::-1],
            color=["tab:green" if p["diagnosed"] else "tab:red" for p in per][::-1],
        )
        ax.set_xlabel("doctor turns (green: right diagnosis, red: not reached / wrong)")
        out["consultation.png"] = png(fig)
    if report.get("retention"):
        names = list(report["retention"])
        fig, ax = plt.subplots(figsize=(6, 3))
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [report["retention"][n]["before"] for n in names], 0.4, label="before")
        ax.bar([x + 0.2 for x in xs], [report["retention"][n]["after"] for n in names], 0.4, label="after")
        ax.set_xticks(list(xs), names)
        ax.set_ylabel("text QA token F1")
        ax.legend()
        out["retention.png"] = png(fig)
    return out


def write_report(report: dict, preds: list[dict], output: str) -> dict[str, str]:
    """Write ``report.json``, ``report.md``, the plots and ``predictions.jsonl`` under ``output``."""
    files = {
        "report.json": json.dumps(report, indent=2).encode(),
        "report.md": render_markdown(report).encode(),
        "predictions.jsonl": "".join(json.dumps(p) + "\n" for p in preds).encode(),
        **render_plots(report),
    }
    uris = {}
    for name, data in files.items():
        uris[name] = storage.join(output, name)
        storage.write_bytes(uris[name], data)
    return uris


def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluation described by ``cfg``; returns the report (also written to ``cfg.output``)."""
    from medlm.data.schema import KINDS

    start = time.time()
    datasets = [d for d in cfg.data.resolved() if TASK_GROUP[d.task] in cfg.tasks]
    preds = predict(cfg, cfg.model, datasets, consult="consultation" in cfg.tasks)
    consultations = (
        [json.loads(p["prediction"]) for p in preds if p["kind"] == CONSULTATION]
        if "consultation" in cfg.tasks
        else None
    )
    preds = [p for p in preds if p["kind"] != CONSULTATION]
    baseline = None
    if "retention" in cfg.tasks and cfg.baseline_model:
        text_sets = [d for d in datasets if d.kind == "text_dialogue" and KINDS[d.kind] == "dialogue"]
        baseline = predict(cfg, cfg.baseline_model, text_sets) if text_sets else None
    cascade = None
    if cfg.cascade is not None:
        cascade = predict(
            cfg,
            None,
            [d for d in datasets if d.kind in ("speech_dialogue", "dialogue", "utterance")],
            cascade=cfg.cascade.model_dump(),
        )
    report = build_report(cfg, datasets, preds, baseline, consultations, cascade)
    report["seconds"] = time.time() - start
    report["files"] = write_report(report, preds, cfg.output)
    log.info("evaluation report written to %s", report["files"]["report.md"])
    return report
