"""Embedded defaults for ``medlm serve`` without a trained run: the tiny presets, exported once to a local
directory and then served from that path exactly like a training run's export (no special code path)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE = Path(os.environ.get("MEDLM_HOME", Path.home() / ".cache" / "medlm")) / "serve-defaults"


def default_model_dir(root: str | os.PathLike | None = None) -> str:
    """An export of the (untrained) tiny SpeechLM: ``SpeechLM.save_pretrained`` + processor."""
    from medlm.models import ModelSpec, build_model

    path = Path(root or CACHE) / "speechlm-tiny"
    if not (path / "config.json").exists():
        model, processor = build_model(ModelSpec(preset="tiny"))
        model.save_pretrained(str(path))
        processor.save_pretrained(str(path))
    return str(path)


def default_ct_index_dir(root: str | os.PathLike | None = None, cases: int = 16) -> str:
    """A saved ``CTIndex`` of synthetic CT volumes, embedded by the (untrained) tiny CT-CLIP teacher."""
    from medlm.ct import CTIndex, generate_ct_cases
    from medlm.ct.job import TINY_SHAPE, CTModelSpec, build_student, build_teacher

    base = Path(root or CACHE)
    path = base / "ct-index-tiny"
    if not (path / "index.json").exists():
        spec = CTModelSpec(preset="tiny")
        teacher, tokenizer = build_teacher(spec)
        teacher.save_pretrained(str(base / "ct-clip-tiny" / "teacher"))
        tokenizer.save_pretrained(str(base / "ct-clip-tiny" / "teacher"))
        build_student(spec).save_pretrained(str(base / "ct-clip-tiny" / "student"))
        data = generate_ct_cases(cases, shape=TINY_SHAPE)
        index = CTIndex.build(str(base / "ct-clip-tiny"), [c["volume"] for c in data], [c["id"] for c in data],
                              [c["spacing"] for c in data])
        index.save(str(path))
    return str(path)
