"""Targets from the model's own text answers (AudioChatLlama, Freeze-Omni, BLSP: the anchors' notes, §4).

Stage 2 aligns speech so that the model answers a spoken question as it answers the same question typed.
The dataset's reference answers are another text than the one the frozen model would write; its own greedy
answer to the transcript is exactly what a spoken question should lead to. :func:`write_self_answers` runs the
(frozen) stage-1 export once over a spoken dataset, each recording's transcript in its place, and writes
``speech_dialogue`` rows whose last assistant turn is that answer: a dialogue keeps its turns (the
reference answer moves to ``meta["reference_answer"]``); an utterance (a spoken sentence: a question, a
complaint) becomes a one-turn consultation, the way Ultravox's and BLSP's "continuation" task turns any
transcribed speech into chat data. ``meta["target"]`` says ``"self"``. Frozen work done once: stage 2 then
reads it as any other dataset (``data.datasets: [{name: qa_speech_self, uri: <root>/qa_speech_self, kind:
speech_dialogue}]``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from medlm import storage
from medlm.data.io import iter_rows, shard_files, write_rows
from medlm.data.schema import BadRecord, to_messages


@dataclass(frozen=True)
class SelfAnswerSet:
    """A registered self-answer dataset: the factory dataset it answers (and its kind), and the dataset that
    trains on the same recordings with reference targets instead (for a run without a stage-1 model)."""

    source: str
    kind: str
    reference: str


SELF_ANSWER_SETS = {
    "qa_speech_self": SelfAnswerSet("qa_speech", "speech_dialogue", reference="qa_speech"),
    "sentences_self": SelfAnswerSet("sentences", "utterance", reference="sentences_asr"),
}
DONE = "_self_answers.json"  # written last, beside the shards: the set is complete (and by which model)


def check_self_answer_set(name: str) -> SelfAnswerSet:
    """The registered self-answer set ``name``; a clear error for any other name."""
    if name not in SELF_ANSWER_SETS:
        raise ValueError(f"{name!r} is not a self-answer set; choose from {sorted(SELF_ANSWER_SETS)}")
    return SELF_ANSWER_SETS[name]


def write_self_answer_sets(
    model_dir: str, data_root: str, out_root: str, limits: dict[str, int | None]
) -> dict[str, str]:
    """The self-answer sets named in ``limits`` (:data:`SELF_ANSWER_SETS`; each its first N source rows, or
    all), answered by ``model_dir`` from the spoken data under ``data_root``, written to ``out_root/<name>``
    -> ``{name: uri}``. A set already complete there from the same model (the same files: an export retrained
    at the same path is another model), source shards and limit is kept (frozen work done once); else it is
    rewritten."""
    uris = {}
    for name, limit in limits.items():
        spec, uri = check_self_answer_set(name), storage.join(out_root, name)
        src, done = storage.join(data_root, spec.source), storage.join(uri, DONE)
        key = {
            "model": model_dir,
            "version": storage.version(model_dir),
            "source": storage.version(src, files=shard_files(src)),  # its shards, not the caches beside them
            "limit": limit,
        }
        if not storage.exists(done) or json.loads(storage.read_text(done)).get("key") != key:
            storage.delete_files(uri, DONE)  # incomplete until written again
            counts = write_self_answers(model_dir, src, uri, spec.kind, limit=limit)
            storage.write_text(done, json.dumps({"key": key, **counts}))
        uris[name] = uri
    return uris


def write_self_answers(
    model_dir: str,
    src: str,
    dst: str,
    kind: str = "speech_dialogue",
    batch_size: int = 16,
    max_new_tokens: int = 64,
    limit: int | None = None,
) -> dict[str, int]:
    """``src`` (a ``speech_dialogue`` or ``utterance`` dataset, as ``kind`` says) -> ``dst``: each row whose
    recordings all carry transcripts as a dialogue whose last assistant turn is the greedy answer of the
    export ``model_dir`` to the conversation up to it, transcripts in place of the audio; the first ``limit``
    rows.
    Rows without transcripts or that do not parse are skipped (counted). Returns ``{"rows", "skipped"}``."""
    import torch

    from medlm.models import ModelSpec, build_model
    from medlm.models.baselines import audio_parts, with_text

    model, processor = build_model(ModelSpec(init_from=model_dir))
    model.eval()
    pending, out, skipped = [], [], 0

    def flush() -> None:
        inputs = processor.prepare_generation([p for _, p in pending])
        with torch.no_grad():
            new = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        for (row, _), answer in zip(pending, processor.decode(new)):
            out.append(_with_answer(row, answer.strip()))
        pending.clear()

    for n, row in enumerate(iter_rows(src)):
        if limit is not None and n >= limit:
            break
        if kind == "utterance":
            row = _as_dialogue(row)
        try:
            messages, _ = to_messages(row, "speech_dialogue")
        except BadRecord:
            skipped += 1
            continue
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = messages[:last]
        parts = audio_parts(prompt)
        if not parts or not all(p.get("transcript") for p in parts):
            skipped += 1
            continue
        pending.append((row, with_text(prompt, [p["transcript"] for p in parts])))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    storage.delete_files(dst, "part-")
    write_rows(out, dst, "speech_dialogue")
    return {"rows": len(out), "skipped": skipped}


def _as_dialogue(utt: dict) -> dict:
    """A spoken sentence as a one-turn consultation (its answer to be written)."""
    user = {"role": "user", "text": None, "audio": utt.get("audio"), "sample_rate": utt.get("sample_rate")}
    user["transcript"] = utt.get("transcript")
    assistant = {"role": "assistant", "text": "?", "audio": None, "sample_rate": None, "transcript": None}
    return {
        "id": utt.get("id"),
        "source": utt.get("source"),
        "meta": utt.get("meta"),
        "turns": [user, assistant],
    }


def _with_answer(row: dict, answer: str) -> dict:
    turns = [dict(t) for t in row["turns"]]
    last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
    meta = json.loads(row.get("meta") or "{}")
    meta.update(target="self", reference_answer=turns[last]["text"])
    turns[last]["text"] = answer
    return {**row, "turns": turns, "meta": json.dumps(meta, sort_keys=True)}
