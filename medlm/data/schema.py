"""Parquet shard schemas and the converters from a shard row to chat messages.

Three schemas cover every dataset kind; audio is always stored encoded (FLAC bytes) with its
sample rate, and decoded to float32 mono 16 kHz only when it is converted to messages.

``dialogue`` (kinds ``text_dialogue`` and ``speech_dialogue``; one schema so both can be mixed)
    ``id`` string, ``source`` string (generator / corpus name),
    ``turns`` list<struct<role, text, audio (FLAC, may be null), sample_rate, transcript>>,
    ``meta`` JSON string (e.g. ``{"fact_id": ..., "condition": ...}``).
    A turn carries text, audio, or both (audio first, then text). ``transcript`` is what the
    audio says (used by the KD-from-text loss); ``role`` is system | user | assistant.

``utterance`` (kind ``utterance``: one labelled recording)
    ``id``, ``source``, ``audio`` (FLAC), ``sample_rate``, ``transcript``,
    ``entities`` list<struct<start, end, label>> (character spans into ``transcript``, end exclusive,
    labels from :data:`ENTITY_LABELS`), ``sentiment`` (one of :data:`SENTIMENTS`),
    ``speaker`` JSON string (voice metadata), ``meta`` JSON string.

``ct`` (kind ``ct``: a CT volume with its report)
    ``id``, ``volume`` (``np.save`` bytes of an int16 HU array D x H x W), ``shape`` list<int32>,
    ``spacing`` list<float32> (mm, D/H/W), ``labels`` list<int8> (18 CT-RATE classes, 0/1),
    ``report`` text, ``report_audio`` (FLAC of the spoken report, may be null), ``sample_rate``,
    ``split`` (train | val | test).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from medlm import audio as audio_io
from medlm.models.prompts import (
    ASR_PROMPT,
    CT_PROMPT,
    ENTITY_LABELS,
    NER_PROMPT,
    SENTIMENT_PROMPT,
    SENTIMENTS,
    SYSTEM_PROMPT,
)

ROLES = ("system", "user", "assistant")
# The 18 CT-RATE abnormality classes, in the order of a ct row's ``labels``.
CT_RATE_CLASSES: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)


NUM_CT_CLASSES = 18

TURN = pa.struct(
    [
        ("role", pa.string()),
        ("text", pa.string()),
        ("audio", pa.binary()),
        ("sample_rate", pa.int32()),
        ("transcript", pa.string()),
    ]
)
ENTITY = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("label", pa.string())])

DIALOGUE = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        ("source", pa.string()),
        ("turns", pa.list_(TURN)),
        ("meta", pa.string()),
    ]
)
UTTERANCE = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        ("source", pa.string()),
        ("audio", pa.binary()),
        ("sample_rate", pa.int32()),
        ("transcript", pa.string()),
        ("entities", pa.list_(ENTITY)),
        ("sentiment", pa.string()),
        ("speaker", pa.string()),
        ("meta", pa.string()),
    ]
)
CT = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        ("volume", pa.binary()),
        ("shape", pa.list_(pa.int32())),
        ("spacing", pa.list_(pa.float32())),
        ("labels", pa.list_(pa.int8())),
        ("report", pa.string()),
        ("report_audio", pa.binary()),
        ("sample_rate", pa.int32()),
        ("split", pa.string()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {"dialogue": DIALOGUE, "utterance": UTTERANCE, "ct": CT}
KINDS: dict[str, str] = {
    "text_dialogue": "dialogue",
    "speech_dialogue": "dialogue",
    "dialogue": "dialogue",
    "utterance": "utterance",
    "ct": "ct",
}
TASKS: dict[str, tuple[str, ...]] = {
    "dialogue": ("chat",),
    "utterance": ("asr", "ner", "sentiment", "multitask"),
    "ct": ("report", "spoken_report"),
}


def schema_for(kind: str) -> pa.Schema:
    """The Arrow schema of a dataset kind (``text_dialogue`` / ``speech_dialogue`` / ``utterance`` /
    ``ct``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(KINDS)}")
    return SCHEMAS[KINDS[kind]]


class BadRecord(ValueError):
    """A shard row that cannot be used; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --- audio / volume encoding ------------------------------------------------------------------


def encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    """float mono audio in [-1, 1] -> FLAC bytes (16 bit)."""
    return audio_io.encode(audio, sample_rate, "FLAC", "PCM_16")


def decode_audio(
    data: bytes | None, sample_rate: int | None, max_seconds: float | None = None, min_seconds: float = 0.05
) -> np.ndarray:
    """A row's encoded audio -> float32 mono at 16 kHz (:func:`medlm.audio.decode`); raises
    :class:`BadRecord`.

    Checks: present, decodable (corrupt / truncated), the stored ``sample_rate`` matches the file,
    at least 8 kHz, not empty, silent or too short, not longer than ``max_seconds``, finite samples.
    """
    if data and not sample_rate:
        raise BadRecord("missing_field", "sample_rate")
    try:
        return audio_io.decode(
            data,
            max_seconds=max_seconds,
            declared_rate=sample_rate,
            min_rate=8000,
            min_seconds=min_seconds,
            reject_silence=True,
        )
    except audio_io.AudioError as e:
        raise BadRecord(e.reason, e.detail) from None


def pack_volume(volume: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(volume, dtype=np.int16), allow_pickle=False)
    return buf.getvalue()


def unpack_volume(data: bytes | None, shape: Any = None) -> np.ndarray:
    """``np.save`` bytes -> int16 HU volume; checks it against the stored shape."""
    if not data:
        raise BadRecord("missing_field", "volume")
    try:
        vol = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - np.load raises several types for bad bytes
        raise BadRecord("corrupt_volume", type(e).__name__) from None
    if vol.ndim != 3 or vol.dtype != np.int16:
        raise BadRecord("corrupt_volume", f"{vol.dtype} {vol.shape}")
    if shape is not None and tuple(int(s) for s in shape) != vol.shape:
        raise BadRecord("corrupt_volume", f"shape {vol.shape} != stored {tuple(shape)}")
    return vol


def audio_seconds(data: bytes | None) -> float:
    """Duration of encoded audio from its header (0 when absent)."""
    if not data:
        return 0.0
    import soundfile as sf

    info = sf.info(io.BytesIO(data))
    return info.frames / info.samplerate


def spoken_seconds(messages: list[dict]) -> float:
    """Seconds of audio in a chat's audio parts (16 kHz arrays, or cached frames with their ``seconds``)."""
    parts = [p for m in messages if isinstance(m["content"], list) for p in m["content"]]
    return sum(len(p["audio"]) / audio_io.SAMPLING_RATE for p in parts if p["type"] == "audio") + sum(
        p["seconds"] for p in parts if p["type"] == "audio_frames"
    )


# --- row -> chat messages ---------------------------------------------------------------------


def _require(row: dict, *names: str) -> None:
    for n in names:
        if row.get(n) is None or (isinstance(row.get(n), str) and not row[n].strip() and n != "text"):
            raise BadRecord("missing_field", n)


def _audio_part(
    data: bytes, rate: int, max_seconds: float | None, transcript: str | None, frames: Any = None
) -> dict:
    """A recording -> an ``audio`` part (decoded and checked), or, where ``frames`` (an iterator over the
    row's cached recordings, each ``{"frames": [per-chunk arrays], "seconds": s}``) is given, an
    ``audio_frames`` part (the audio is not decoded: the cache holds only recordings that passed
    these checks)."""
    if frames is not None:
        cached = next(frames, None)
        if cached is None:
            raise BadRecord("encoder_cache", "the row has more recordings than its cached encoder frames")
        if max_seconds is not None and cached["seconds"] > max_seconds:  # the cache holds every length
            raise BadRecord(
                "audio_too_long", f"audio is {cached['seconds']:.1f} s long; the limit is {max_seconds:g} s"
            )
        part = {"type": "audio_frames", **cached}
    else:
        part = {
            "type": "audio",
            "audio": decode_audio(data, rate, max_seconds),
            "sampling_rate": audio_io.SAMPLING_RATE,
        }
    if transcript:
        part["transcript"] = transcript
    return part


def dialogue_to_messages(row: dict, max_audio_seconds: float | None = None, frames: Any = None) -> list[dict]:
    """A ``dialogue`` row -> chat messages (audio decoded; a system prompt is added if absent)."""
    _require(row, "id", "turns")
    turns = list(row["turns"])
    if not turns:
        raise BadRecord("missing_field", "turns (empty)")
    messages: list[dict] = []
    for i, t in enumerate(turns):
        role = t.get("role")
        if role not in ROLES:
            raise BadRecord("unknown_label", f"turn {i} role {role!r}")
        text, audio = t.get("text"), t.get("audio")
        if not text and not audio:
            raise BadRecord("missing_field", f"turn {i} has neither text nor audio")
        if role == "assistant" and audio and not text:
            raise BadRecord("missing_field", f"assistant turn {i} has no text")
        if role != "user" or not audio:
            messages.append({"role": role, "content": text})
            continue
        parts = [_audio_part(audio, t.get("sample_rate"), max_audio_seconds, t.get("transcript"), frames)]
        if text:
            parts.append({"type": "text", "text": text})
        messages.append({"role": "user", "content": parts})
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRecord("missing_field", "no assistant turn")
    if messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
    return messages


def check_entities(row: dict) -> list[dict]:
    """Validated entity spans of an ``utterance`` row."""
    text = row.get("transcript") or ""
    out = []
    for e in row.get("entities") or []:
        if e.get("label") not in ENTITY_LABELS:
            raise BadRecord("unknown_label", f"entity label {e.get('label')!r}")
        s, t = e.get("start"), e.get("end")
        if s is None or t is None or not 0 <= s < t <= len(text):
            raise BadRecord("bad_span", f"[{s}, {t}) in a {len(text)}-char transcript")
        out.append({"start": int(s), "end": int(t), "label": e["label"]})
    return out


def entities_text(row: dict) -> str:
    ents = check_entities(row)
    text = row["transcript"]
    return "\n".join(f"{e['label']}: {text[e['start'] : e['end']]}" for e in ents) or "none"


def utterance_class_label(row: dict) -> list[int]:
    """Classifier-head targets of an utterance: ``[sentiment index in SENTIMENTS, *entity-type presence]``,
    the presence (0/1) of each label of :data:`ENTITY_LABELS` among its entities (the SpeechLLM regularizer
    sees NER as well as sentiment; a head without entity outputs uses the first target only)."""
    sentiment = row.get("sentiment")
    if sentiment not in SENTIMENTS:
        raise BadRecord("unknown_label", f"sentiment {sentiment!r}")
    present = {e["label"] for e in check_entities(row)}
    return [SENTIMENTS.index(sentiment), *(int(label in present) for label in ENTITY_LABELS)]


def utterance_to_messages(
    row: dict, task: str = "asr", max_audio_seconds: float | None = None, frames: Any = None
) -> list[dict]:
    """An ``utterance`` row -> a prompt with the audio and the answer as the assistant turn."""
    _require(row, "id", "audio", "sample_rate", "transcript")
    if task == "asr" or task == "multitask":
        prompt, answer = ASR_PROMPT, row["transcript"]
    elif task == "ner":
        prompt, answer = NER_PROMPT, entities_text(row)
    elif task == "sentiment":
        if row.get("sentiment") not in SENTIMENTS:
            raise BadRecord("unknown_label", f"sentiment {row.get('sentiment')!r}")
        prompt, answer = SENTIMENT_PROMPT, row["sentiment"]
    else:
        raise ValueError(f"unknown utterance task {task!r}; expected one of {TASKS['utterance']}")
    audio = _audio_part(row["audio"], row["sample_rate"], max_audio_seconds, row["transcript"], frames)
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [audio, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": answer},
    ]


def ct_findings_text(labels: Any, class_names: tuple[str, ...] | list[str]) -> str:
    names = [class_names[i] for i, v in enumerate(labels) if v]
    return ", ".join(names) if names else "No abnormality."


def check_ct_labels(row: dict) -> np.ndarray:
    labels = row.get("labels")
    if labels is None:
        raise BadRecord("missing_field", "labels")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (NUM_CT_CLASSES,) or not np.isin(labels, (0, 1)).all():
        raise BadRecord("unknown_label", f"CT labels must be 18 values in {{0, 1}}, got {labels.tolist()}")
    return labels.astype(np.int8)


def ct_to_messages(
    row: dict, task: str = "report", max_audio_seconds: float | None = None, frames: Any = None
) -> list[dict]:
    """A ``ct`` row -> messages asking for the findings of its (written or spoken) report."""
    _require(row, "id", "report")
    labels = check_ct_labels(row)
    if task == "report":
        user: Any = f"{CT_PROMPT}\n\n{row['report']}"
    elif task == "spoken_report":
        _require(row, "report_audio")
        user = [
            _audio_part(
                row["report_audio"], row.get("sample_rate"), max_audio_seconds, row["report"], frames
            ),
            {"type": "text", "text": CT_PROMPT},
        ]
    else:
        raise ValueError(f"unknown ct task {task!r}; expected one of {TASKS['ct']}")
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user},
        {"role": "assistant", "content": ct_findings_text(labels, CT_RATE_CLASSES)},
    ]


def to_messages(
    row: dict,
    kind: str,
    task: str | None = None,
    max_audio_seconds: float | None = None,
    frames: Iterable[dict] | None = None,
) -> tuple[list[dict], Any]:
    """Any shard row -> (chat messages, class label or None). Raises :class:`BadRecord` for bad rows.

    ``frames``: the row's cached encoder frames (``medlm.data.frames.unpack``), one
    ``{"frames": [per-chunk arrays], "seconds": s}`` per recording in reading order: the audio parts become
    ``audio_frames`` parts (nothing is decoded; a task that reads no audio, e.g. CT ``report``, uses none)."""
    frames = iter(frames) if frames is not None else None
    base = KINDS.get(kind)
    if base is None:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(KINDS)}")
    task = task or TASKS[base][0]
    if task not in TASKS[base]:
        raise ValueError(f"task {task!r} does not apply to kind {kind!r}; expected one of {TASKS[base]}")
    if base == "dialogue":
        return dialogue_to_messages(row, max_audio_seconds, frames), None
    if base == "utterance":
        messages = utterance_to_messages(row, task, max_audio_seconds, frames)
        # every task of a labelled utterance feeds the classifier regularizer (not only "multitask")
        return messages, utterance_class_label(row) if task == "multitask" or row.get("sentiment") else None
    return ct_to_messages(row, task, max_audio_seconds, frames), None


def dumps_meta(meta: dict | None) -> str:
    return json.dumps(meta or {}, sort_keys=True)
