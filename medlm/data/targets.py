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

from medlm import storage
from medlm.data.io import iter_rows, write_rows
from medlm.data.schema import BadRecord, to_messages


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
