"""The synthetic data factory: knowledge base -> text / speech dialogues, utterances, CT cases.

``make_data(cfg)`` fans the work out as Ray tasks (one per output shard, :func:`make_shards`) and writes,
under ``cfg.output`` (the datasets' kinds and registered names: ``medlm.data.registry.FACTORY_DATASETS``)::

    consult_text/        text consultations about every condition (stage-1 corpus)      dialogue
    qa_text/             one written question + answer per fact (meta: fact_id)           dialogue
    consult_speech/      consultations about the *speech* conditions, patient turns spoken dialogue
    qa_speech/           spoken-style QA (LLM rewrite + filter) for speech facts, spoken  dialogue
    qa_speech_heldout/   the same for facts never heard as speech (evaluation)            dialogue
    utterances/          patient sentences, LLM-annotated entities + sentiment, spoken    utterance
    sentences/           distinct sentences over a broad medical vocabulary (planted      utterance
                         entities + sentiment), spoken: transcription data for alignment
    ct/                  synthetic CT volumes, 18 CT-RATE labels, report (+ spoken report) ct
    facts.jsonl          the knowledge base facts with their ``speech`` split
    manifest.json        the summary (rows, shards, audio hours, voices, filtered, quarantined)

Every row is validated (decoded and converted to messages) before it is written; rows that fail go
to ``_quarantine/`` with the reason. Everything is deterministic given ``cfg.seed``.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field

from medlm import storage
from medlm.config import Section
from medlm.data import kb, sentences
from medlm.data.io import shard_uri, write_shard
from medlm.data.llm import LLMConfig, build_llm
from medlm.data.quarantine import bad_record, summarize_quarantine, write_quarantine
from medlm.data.registry import FACTORY_DATASETS
from medlm.data.schema import BadRecord, audio_seconds, dumps_meta, encode_flac, pack_volume, to_messages
from medlm.models.tts import TTSConfig, Voice, build_tts, voice_bank


class MakeDataConfig(Section):
    output: str = "s3://medlm/data"
    seed: int = 0
    consultations: int = Field(default=40, ge=0)  # text consultations
    speech_consultations: int = Field(default=16, ge=0)  # spoken consultations (speech conditions only)
    utterances: int = Field(default=32, ge=0)
    sentences: int = Field(default=16, ge=0)  # broad-vocabulary spoken sentences (alignment)
    ct_cases: int = Field(default=6, ge=0)
    ct_shape: tuple[int, int, int] = (16, 32, 32)
    spoken_ct_reports: bool = True
    speech_fraction: float = Field(default=0.5, ge=0, le=1)  # share of conditions whose facts are spoken
    knowledge: Literal["standard", "invented"] = "standard"  # kb.KNOWLEDGE: real-world or invented facts
    qa_forms: int = Field(default=1, ge=1, le=2)  # written questions per fact in qa_text
    rows_per_shard: int = Field(default=2000, ge=1)
    max_audio_seconds: float = 60.0
    llm: LLMConfig = Field(default_factory=LLMConfig)
    tts: TTSConfig = Field(default_factory=TTSConfig)


DATASETS = tuple(d.path for d in FACTORY_DATASETS)  # in the order they are written
KIND_OF = {d.path: d.kind for d in FACTORY_DATASETS}


def speech_conditions(cfg: MakeDataConfig) -> set[str]:
    """The conditions whose facts are spoken in training (the rest stay text-only)."""
    ids = [c.id for c in kb.KNOWLEDGE[cfg.knowledge]]
    random.Random(cfg.seed).shuffle(ids)
    return set(ids[: round(len(ids) * cfg.speech_fraction)])


def _rng(cfg: MakeDataConfig, dataset: str, i: int) -> random.Random:
    return random.Random(f"{cfg.seed}/{dataset}/{i}")


class _Speaker:
    """TTS with a seeded voice per item; records the seconds and voices it produced."""

    def __init__(self, cfg: MakeDataConfig):
        self.tts = build_tts(cfg.tts)
        self.voices = voice_bank(cfg.tts.num_voices, cfg.seed, cfg.tts.backend, cfg.tts.piper_voice)

    def voice(self, rng: random.Random) -> Voice:
        """A voice of the bank with this utterance's settings (Piper: speed and prosody)."""
        return rng.choice(self.voices).for_utterance(rng)

    def say(self, text: str, voice: Voice) -> tuple[bytes, int]:
        audio, rate = self.tts.synthesize(text, voice)
        return encode_flac(audio, rate), rate


def _items(cfg: MakeDataConfig, dataset: str) -> list[Any]:
    """The work items of a dataset (indices or QA pairs), in their final order."""
    speech, conditions = speech_conditions(cfg), kb.KNOWLEDGE[cfg.knowledge]
    if dataset == "consult_text":
        return list(range(cfg.consultations))
    if dataset == "qa_text":
        pairs = kb.qa_pairs(cfg.seed, conditions=conditions, forms=cfg.qa_forms)
        return [
            {**q, "row_id": f"qa_text-{q['fact_id']}" + (f"-{i % cfg.qa_forms}" if cfg.qa_forms > 1 else "")}
            for i, q in enumerate(pairs)
        ]
    if dataset == "consult_speech":
        return list(range(cfg.speech_consultations)) if speech else []
    if dataset == "qa_speech":
        return [q for q in kb.qa_pairs(cfg.seed + 1, conditions=conditions) if q["condition"] in speech]
    if dataset == "qa_speech_heldout":
        return [q for q in kb.qa_pairs(cfg.seed + 1, conditions=conditions) if q["condition"] not in speech]
    if dataset == "utterances":
        return list(range(cfg.utterances))
    if dataset == "sentences":
        return list(range(cfg.sentences))
    if dataset == "ct":
        return []  # planned by count in plan()
    raise ValueError(f"unknown dataset {dataset!r}")


def _make_rows(
    cfg: MakeDataConfig, dataset: str, items: list[Any], stats: Counter, voices: set[str]
) -> list[dict]:
    llm = build_llm(cfg.llm)
    spoken = KIND_OF[dataset] != "text_dialogue" and (dataset != "ct" or cfg.spoken_ct_reports)
    speaker = _Speaker(cfg) if spoken else None
    speech, conditions = sorted(speech_conditions(cfg)), kb.KNOWLEDGE[cfg.knowledge]
    rows: list[dict] = []
    for item in items:
        if dataset in ("consult_text", "consult_speech"):
            rng = _rng(cfg, dataset, item)
            cond = (
                conditions[item % len(conditions)]
                if dataset == "consult_text"
                else kb.condition(speech[item % len(speech)])
            )
            turns = kb.consultation(cond, rng)
            meta = {"condition": cond.id}
            if dataset == "consult_speech":
                voice = speaker.voice(rng)
                voices.add(voice.id)
                meta["voice"] = voice.meta()
                for t in turns:
                    if t["role"] == "user":
                        t["audio"], t["sample_rate"] = speaker.say(t["text"], voice)
                        t["transcript"], t["text"] = t.pop("text"), None
            rows.append(
                {"id": f"{dataset}-{item:06d}", "source": "kb", "turns": turns, "meta": dumps_meta(meta)}
            )
        elif dataset == "qa_text":
            rows.append(
                {
                    "id": item["row_id"],
                    "source": "kb",
                    "turns": [
                        {"role": "user", "text": item["question"]},
                        {"role": "assistant", "text": item["answer"]},
                    ],
                    "meta": dumps_meta({"fact_id": item["fact_id"], "condition": item["condition"]}),
                }
            )
        elif dataset in ("qa_speech", "qa_speech_heldout"):
            spoken = llm.rewrite_spoken(item["question"], item["long_answer"])
            if spoken is None:
                stats["filtered"] += 1
                continue
            question, answer = spoken
            rng = _rng(cfg, dataset, item["fact_id"])
            voice = speaker.voice(rng)
            voices.add(voice.id)
            audio, rate = speaker.say(question, voice)
            rows.append(
                {
                    "id": f"{dataset}-{item['fact_id']}",
                    "source": "kb-rewrite",
                    "turns": [
                        {"role": "user", "audio": audio, "sample_rate": rate, "transcript": question},
                        {"role": "assistant", "text": answer},
                    ],
                    "meta": dumps_meta(
                        {
                            "fact_id": item["fact_id"],
                            "condition": item["condition"],
                            "written_question": item["question"],
                            "voice": voice.meta(),
                        }
                    ),
                }
            )
        elif dataset in ("utterances", "sentences"):
            rng = _rng(cfg, dataset, item)
            if dataset == "utterances":
                cond = conditions[rng.randrange(len(conditions))]
                utt = kb.patient_utterance(cond, rng)
                ann, source = llm.annotate(utt["text"]), f"kb/{cfg.llm.backend}"
                meta = {"condition": cond.id, "planted_sentiment": utt["sentiment"]}
                row_id = f"utt-{item:06d}"
            else:
                utt = sentences.sentence(rng)
                ann, source, meta, row_id = utt, "sentences", {}, f"sent-{item:06d}"
            voice = speaker.voice(rng)
            voices.add(voice.id)
            audio, rate = speaker.say(utt["text"], voice)
            rows.append(
                {
                    "id": row_id,
                    "source": source,
                    "audio": audio,
                    "sample_rate": rate,
                    "transcript": utt["text"],
                    "entities": ann["entities"],
                    "sentiment": ann["sentiment"],
                    "speaker": json.dumps(voice.meta()),
                    "meta": dumps_meta(meta),
                }
            )
        elif dataset == "ct":
            from medlm.data.synth_ct import generate_ct_cases

            count, seed = item
            for case in generate_ct_cases(count, tuple(cfg.ct_shape), seed):
                audio, rate = None, None
                if cfg.spoken_ct_reports:
                    voice = speaker.voice(_rng(cfg, dataset, case["id"]))
                    voices.add(voice.id)
                    audio, rate = speaker.say(case["report"], voice)
                rows.append(
                    {
                        "id": str(case["id"]),
                        "volume": pack_volume(case["volume"]),
                        "shape": list(case["volume"].shape),
                        "spacing": [float(s) for s in case["spacing"]],
                        "labels": [int(v) for v in case["labels"]],
                        "report": case["report"],
                        "report_audio": audio,
                        "sample_rate": rate,
                        "split": case["split"],
                    }
                )
    return rows


def _row_audio_seconds(row: dict) -> float:
    total = audio_seconds(row.get("audio")) + audio_seconds(row.get("report_audio"))
    return total + sum(audio_seconds(t.get("audio")) for t in row.get("turns") or [])


def make_shard(cfg: MakeDataConfig, dataset: str, index: int, items: list[Any]) -> dict:
    """Generate, validate and write one shard; returns its stats (runs as a Ray task)."""
    stats: Counter = Counter()
    voices: set[str] = set()
    rows = _make_rows(cfg, dataset, items, stats, voices)
    kind, good, bad = KIND_OF[dataset], [], []
    task = "spoken_report" if dataset == "ct" and cfg.spoken_ct_reports else None
    for row in rows:
        try:
            to_messages(row, kind, task, cfg.max_audio_seconds)
            good.append(row)
        except BadRecord as e:
            bad.append(bad_record(dataset, row.get("id"), e.reason, e.detail, source="make_data"))
    write_quarantine(storage.join(cfg.output, "_quarantine"), bad, prefix=f"make_data-{dataset}")
    if good:
        write_shard(good, shard_uri(storage.join(cfg.output, dataset), index), kind)
    return {
        "dataset": dataset,
        "rows": len(good),
        "quarantined": len(bad),
        "filtered": stats["filtered"],
        "audio_seconds": sum(_row_audio_seconds(r) for r in good),
        "voices": sorted(voices),
    }


def plan(cfg: MakeDataConfig) -> list[tuple[str, int, list[Any]]]:
    """(dataset, shard index, items) for every shard to write."""
    out = []
    for name in DATASETS:
        items = _items(cfg, name)
        if name == "ct":
            n, per = cfg.ct_cases, cfg.rows_per_shard  # CT cases are generated by count, split into shards
            items = [min(per, n - s) for s in range(0, n, per)]
            out += [(name, i, [(k, cfg.seed + 1000 * i)]) for i, k in enumerate(items)]
            continue
        out += [
            (name, i, items[s : s + cfg.rows_per_shard])
            for i, s in enumerate(range(0, len(items), cfg.rows_per_shard))
        ]
    return out


def make_shards(
    cfg: MakeDataConfig, names: Iterable[str] | None = None, progress: bool = False
) -> list[dict]:
    """Write the shards of :func:`plan` whose dataset is in ``names`` (all when None), one Ray task (1 CPU)
    per shard; returns each shard's stats (:func:`make_shard`) in plan order. Writes over what is there:
    clear a dataset's prefix first (``storage.delete_files``) to replace it."""
    names = None if names is None else set(names)
    work = [(name, i, items) for name, i, items in plan(cfg) if names is None or name in names]
    if not work:
        return []
    import ray
    from tqdm import tqdm

    remote = ray.remote(num_cpus=1)(make_shard)
    refs = [remote.remote(cfg, name, i, items) for name, i, items in work]
    pending = list(refs)
    with tqdm(total=len(refs), desc="make_data shards", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))
    return ray.get(refs)


def make_data(cfg: MakeDataConfig, progress: bool = True) -> dict:
    """Write every dataset under ``cfg.output`` with one Ray task per shard; returns the summary."""
    if storage.is_s3(cfg.output):
        storage.makedirs(cfg.output)
    quarantine_uri = storage.join(cfg.output, "_quarantine")
    for name in DATASETS:  # a rerun replaces the previous output
        storage.delete_files(storage.join(cfg.output, name))
    storage.delete_files(quarantine_uri, name_prefix="make_data-")
    results = make_shards(cfg, progress=progress)
    datasets: dict[str, dict] = {}
    for r in sorted(results, key=lambda r: DATASETS.index(r["dataset"])):
        d = datasets.setdefault(
            r["dataset"],
            {
                "uri": storage.join(cfg.output, r["dataset"]),
                "kind": KIND_OF[r["dataset"]],
                "rows": 0,
                "shards": 0,
                "audio_hours": 0.0,
                "filtered": 0,
            },
        )
        d["rows"] += r["rows"]
        d["shards"] += 1 if r["rows"] else 0
        d["audio_hours"] += r["audio_seconds"] / 3600
        d["filtered"] += r["filtered"]
    speech = speech_conditions(cfg)
    storage.write_text(
        storage.join(cfg.output, "facts.jsonl"),
        "".join(
            json.dumps({**f, "speech": f["condition"] in speech}) + "\n"
            for f in kb.facts(kb.KNOWLEDGE[cfg.knowledge])
        ),
    )
    summary = {
        "output": cfg.output,
        "datasets": datasets,
        "audio_hours": sum(d["audio_hours"] for d in datasets.values()),
        "voices": sorted({v for r in results for v in r["voices"]}),
        "facts": len(kb.facts(kb.KNOWLEDGE[cfg.knowledge])),
        "speech_conditions": sorted(speech),
        "quarantine": summarize_quarantine(quarantine_uri),
    }
    storage.write_text(storage.join(cfg.output, "manifest.json"), json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    lines = [
        f"make_data -> {summary['output']}",
        "| dataset | kind | rows | shards | audio h | filtered |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in summary["datasets"].items():
        lines.append(
            f"| {name} | {d['kind']} | {d['rows']} | {d['shards']} | "
            f"{d['audio_hours']:.4f} | {d['filtered']} |"
        )
    q = summary["quarantine"]
    lines.append(
        f"audio: {summary['audio_hours']:.3f} h; voices used: {len(summary['voices'])} "
        f"({', '.join(summary['voices'])}); facts: {summary['facts']}; quarantined: {q['total']} "
        f"{q['by_reason'] or ''}"
    )
    return "\n".join(lines)
