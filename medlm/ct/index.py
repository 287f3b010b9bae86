"""The CT retriever: trained encoders + an index of volume embeddings.

A trained ``ct_clip`` output (``model_dir``, local or ``s3://``) holds ``teacher/`` (CT-CLIP: CT encoder,
text encoder, tokenizer) and ``student/`` (the speech encoder). :class:`CTEncoders` loads them;
:class:`CTIndex` embeds volumes once and answers::

    index = CTIndex.build("s3://medlm/runs/ct_clip", volumes, ids, spacings)   # HU volumes (D, H, W)
    index.save("/tmp/ct_index"); index = CTIndex.load("/tmp/ct_index")
    index.search_text("Cardiomegaly and pleural effusion.", k=5)     # [(id, cosine score), ...]
    index.search_audio(waveform_16k, k=5)                              # a spoken report
    index.classify("There is a lung nodule.")    # report (text or 16 kHz audio) -> {class: P}
    index.classify_volume(id="ct-0-00003")       # an indexed (or given) volume -> {class: P}

Zero-shot classification follows CT-CLIP: for each class the pair "{X} is present." / "{X} is not
present." is embedded by the text encoder and P(present) is the softmax over the pair.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from medlm import storage
from medlm.ct.metrics import prompts, zero_shot_probs
from medlm.ct.preprocess import VolumeSpec, preprocess_volume
from medlm.data.schema import CT_RATE_CLASSES


def _no_grad(fn):
    """Run ``fn`` under ``torch.no_grad()`` (torch is imported lazily, so no bare decorator)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


class CTEncoders:
    """Teacher (volumes, text) and speech student loaded from ``save_pretrained`` dirs (local or ``s3://``)."""

    def __init__(self, teacher_dir: str, student_dir: str | None = None):
        from transformers import AutoTokenizer

        from medlm.ct.modeling import CTClipModel, SpeechCTModel

        local = storage.local_copy(teacher_dir)
        self.teacher = CTClipModel.from_pretrained(local).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(local)
        self.student = (
            SpeechCTModel.from_pretrained(storage.local_copy(student_dir)).eval() if student_dir else None
        )
        self.volume_shape = tuple(self.teacher.config.vision["volume_shape"])
        self.logit_scale = float(self.teacher.logit_scale.detach())

    @classmethod
    def from_output(cls, model_dir: str, student: str = "student") -> "CTEncoders":
        return cls(storage.join(model_dir, "teacher"), storage.join(model_dir, student))

    @_no_grad
    def embed_volumes(self, volumes: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Preprocessed volumes (N, D, H, W) in [-1, 1] -> (N, latent)."""
        import torch

        volumes = np.asarray(volumes, dtype=np.float32)
        if volumes.ndim != 4 or volumes.shape[1:] != self.volume_shape:
            raise ValueError(
                f"expected preprocessed volumes (N, {', '.join(map(str, self.volume_shape))}), "
                f"got {volumes.shape}"
            )
        out = [
            self.teacher.encode_volume(torch.from_numpy(volumes[i : i + batch_size])).numpy()
            for i in range(0, len(volumes), batch_size)
        ]
        return np.concatenate(out)

    @_no_grad
    def embed_texts(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        from medlm.ct.modeling import text_inputs

        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError("texts must be a non-empty list of non-empty strings")
        out = []
        for i in range(0, len(texts), batch_size):
            enc = text_inputs(
                self.tokenizer, texts[i : i + batch_size], 512, self.teacher.config.text_per_sentence
            )
            out.append(self.teacher.encode_text(**enc).numpy())
        return np.concatenate(out)

    @_no_grad
    def embed_audio(self, waveforms: list[np.ndarray], batch_size: int = 8) -> np.ndarray:
        """16 kHz mono float waveforms -> (N, latent) speech embeddings."""
        import torch

        if self.student is None:
            raise ValueError("no speech student loaded")
        out = []
        for i in range(0, len(waveforms), batch_size):
            f = self.student.featurize(waveforms[i : i + batch_size])
            out.append(
                self.student.encode_speech(
                    *(torch.from_numpy(f[k]) for k in ("input_features", "frame_mask", "chunks"))
                ).numpy()
            )
        return np.concatenate(out)


class CTIndex:
    """Volume embeddings + the encoders that query them (text, speech) and zero-shot class prompts."""

    def __init__(
        self,
        encoders: CTEncoders,
        ids: list[str],
        embeddings: np.ndarray,
        volume_spec: VolumeSpec,
        classes: tuple[str, ...] = CT_RATE_CLASSES,
    ):
        if len(ids) != len(embeddings):
            raise ValueError(f"{len(ids)} ids but {len(embeddings)} embeddings")
        if len(set(ids)) != len(ids):
            raise ValueError("volume ids must be unique")
        self.encoders, self.ids, self.embeddings = (
            encoders,
            list(ids),
            np.asarray(embeddings, dtype=np.float32),
        )
        self.volume_spec, self.classes = volume_spec, tuple(classes)
        present, absent = prompts(self.classes)
        emb = encoders.embed_texts(present + absent)
        self.present_emb, self.absent_emb = emb[: len(self.classes)], emb[len(self.classes) :]

    @classmethod
    def build(
        cls,
        model_dir: str,
        volumes,
        ids: list[str],
        spacings=None,
        volume_spec: VolumeSpec | None = None,
        preprocessed: bool = False,
    ) -> "CTIndex":
        """Index HU ``volumes`` (each (D, H, W) with its ``spacings`` entry in mm), or ``preprocessed`` ones.

        ``volume_spec`` defaults to the teacher's input shape at the synthetic set's base spacing.
        """
        from medlm.data.synth_ct import base_spacing

        enc = CTEncoders.from_output(model_dir)
        spec = volume_spec or VolumeSpec(
            target_shape=enc.volume_shape, target_spacing=base_spacing(enc.volume_shape)
        )
        if len(volumes) != len(ids):
            raise ValueError(f"{len(volumes)} volumes but {len(ids)} ids")
        if preprocessed:
            batch = np.asarray(volumes, dtype=np.float32)
        else:
            if spacings is None or len(spacings) != len(volumes):
                raise ValueError("HU volumes need one spacing (D, H, W mm) each")
            batch = np.stack([preprocess_volume(v, s, spec) for v, s in zip(volumes, spacings)])
        return cls(enc, [str(i) for i in ids], enc.embed_volumes(batch), spec)

    def save(self, path: str) -> str:
        """``index.json`` + ``embeddings.npy`` + the encoders (``teacher/``, ``student/``) under ``path``."""
        if storage.is_s3(path):
            import tempfile

            with tempfile.TemporaryDirectory(prefix="medlm-ctindex-") as tmp:
                self.save(tmp)
                storage.copy_tree(tmp, path)
            return path
        local = Path(path)
        local.mkdir(parents=True, exist_ok=True)
        self.encoders.teacher.save_pretrained(str(local / "teacher"))
        self.encoders.tokenizer.save_pretrained(str(local / "teacher"))
        if self.encoders.student is not None:
            self.encoders.student.save_pretrained(str(local / "student"))
        np.save(local / "embeddings.npy", self.embeddings)
        (local / "index.json").write_text(
            json.dumps(
                {
                    "ids": self.ids,
                    "classes": list(self.classes),
                    "volume_spec": self.volume_spec.model_dump(mode="json"),
                }
            )
        )
        return path

    @classmethod
    def load(cls, path: str) -> "CTIndex":
        local = Path(storage.local_copy(path))
        if not (local / "index.json").exists():
            raise FileNotFoundError(f"{path} is not a saved CTIndex (no index.json)")
        meta = json.loads((local / "index.json").read_text())
        student = str(local / "student") if (local / "student").exists() else None
        enc = CTEncoders(str(local / "teacher"), student)
        return cls(
            enc,
            meta["ids"],
            np.load(local / "embeddings.npy"),
            VolumeSpec(**meta["volume_spec"]),
            tuple(meta["classes"]),
        )

    # ---- queries -----------------------------------------------------------------------------------------

    def _top_k(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores = self.embeddings @ query
        order = np.argsort(-scores, kind="stable")[:k]
        return [(self.ids[i], float(scores[i])) for i in order]

    def search_text(self, text: str, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` volumes that best match a written report / finding description."""
        return self._top_k(self.encoders.embed_texts([text])[0], k)

    def search_audio(self, waveform_16k: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` volumes that best match a spoken report (16 kHz mono float waveform)."""
        return self._top_k(self.encoders.embed_audio([waveform_16k])[0], k)

    def _scores(self, emb: np.ndarray, labels: list[str] | None) -> dict[str, float]:
        names = list(labels) if labels else list(self.classes)
        unknown = [n for n in names if n not in self.classes]
        if unknown:
            raise ValueError(f"unknown classes {unknown}; known: {list(self.classes)}")
        idx = [self.classes.index(n) for n in names]
        p = zero_shot_probs(
            emb[None], self.present_emb[idx], self.absent_emb[idx], self.encoders.logit_scale
        )[0]
        return {n: float(v) for n, v in zip(names, p)}

    def classify(self, query: str | np.ndarray, labels: list[str] | None = None) -> dict[str, float]:
        """P(present) per class for a report: text (``str``) or spoken (1-D 16 kHz waveform)."""
        if isinstance(query, str):
            emb = self.encoders.embed_texts([query])[0]
        else:
            wav = np.asarray(query)
            if wav.ndim != 1:
                raise ValueError(
                    f"classify takes a report (text or 1-D audio); use classify_volume for "
                    f"volumes (got an array of shape {wav.shape})"
                )
            emb = self.encoders.embed_audio([wav])[0]
        return self._scores(emb, labels)

    def classify_volume(
        self,
        id: str | None = None,
        volume: np.ndarray | None = None,
        spacing=None,
        labels: list[str] | None = None,
    ) -> dict[str, float]:
        """CT-CLIP zero-shot P(present) per class for an indexed volume ``id`` or a HU ``volume`` +
        ``spacing``."""
        if (id is None) == (volume is None):
            raise ValueError("pass exactly one of id or volume")
        if id is not None:
            if id not in self.ids:
                raise KeyError(f"volume {id!r} is not in the index")
            emb = self.embeddings[self.ids.index(id)]
        else:
            if spacing is None:
                raise ValueError("a HU volume needs its spacing (D, H, W mm)")
            emb = self.encoders.embed_volumes(preprocess_volume(volume, spacing, self.volume_spec)[None])[0]
        return self._scores(emb, labels)
