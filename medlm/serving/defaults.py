"""Embedded defaults for ``medlm serve`` without a trained run: the real preset (whisper-tiny.en's encoder, an
untrained adapter, SmolLM2) when the model store has it, else the tiny one; exported once to a local directory
and then served from that path exactly like a training run's export (no special code path). Text turns, the
cascade and spoken replies are real with it; spoken questions need a trained adapter (``--model``)."""

from __future__ import annotations

import os
from pathlib import Path

from medlm import paths


def default_model_dir(root: str | os.PathLike | None = None, preset: str | None = None) -> str:
    """An export (``SpeechLM.save_pretrained`` + processor) of the SpeechLM of ``preset`` with an untrained
    adapter; ``None``: ``real`` if the model store holds its parts, else ``tiny``."""
    from medlm.models import ModelSpec, build_model
    from medlm.models.pretrained import is_fetched

    if preset is None:
        preset = (
            "real"
            if all(is_fetched(n, verify=False) for n in ("whisper-tiny.en", "smollm2-135m-instruct"))
            else "tiny"
        )
    path = Path(root or paths.serve_defaults_dir()) / f"speechlm-{preset}"
    if not (path / "model.safetensors.index.json").exists():  # (an export from before the parts layout too)
        model, processor = build_model(ModelSpec(preset=preset))
        model.save_pretrained(str(path))
        processor.save_pretrained(str(path))
    return str(path)


def default_ct_index_dir(root: str | os.PathLike | None = None, cases: int = 16) -> str:
    """A saved ``CTIndex`` of synthetic CT volumes, embedded by the (untrained) tiny CT-CLIP teacher."""
    from medlm.ct import CTIndex
    from medlm.ct.build import TINY_SHAPE, CTModelSpec, build_student, build_teacher
    from medlm.data.synth_ct import generate_ct_cases

    base = Path(root or paths.serve_defaults_dir())
    path = base / "ct-index-tiny"
    if not (path / "index.json").exists():
        spec = CTModelSpec(preset="tiny")
        teacher, tokenizer = build_teacher(spec)
        teacher.save_pretrained(str(base / "ct-clip-tiny" / "teacher"))
        tokenizer.save_pretrained(str(base / "ct-clip-tiny" / "teacher"))
        build_student(spec).save_pretrained(str(base / "ct-clip-tiny" / "student"))
        data = generate_ct_cases(cases, shape=TINY_SHAPE)
        index = CTIndex.build(
            str(base / "ct-clip-tiny"),
            [c["volume"] for c in data],
            [c["id"] for c in data],
            [c["spacing"] for c in data],
        )
        index.save(str(path))
    return str(path)
