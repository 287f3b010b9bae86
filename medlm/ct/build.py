"""CT-CLIP and SpeechCT-CLIP models from a ``CTModelSpec``: the teacher (CT encoder + text encoder), the
speech student, and the text inputs the teacher reads. Used by the ``ct_clip`` job and by serving's embedded
defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from transformers import AutoConfig, AutoModel, BertConfig

from medlm.config import Section
from medlm.ct.modeling import (
    CTVIT_PRESETS,
    TEXT_PRESETS,
    CTClipModel,
    CTClipModelConfig,
    SpeechCTConfig,
    SpeechCTModel,
    build_text_tokenizer,
    text_inputs,
    text_model_kwargs,
)
from medlm.models import ModelSpec, build_audio_encoder
from medlm.models.build import encoder_config, resolve_spec
from medlm.models.pretrained import resolve_checkpoint

TINY_SHAPE = (16, 32, 32)  # (D, H, W) of the tiny preset's volumes


class CTModelSpec(Section):
    """Teacher and student shapes (presets) and optional real weights (local dirs or ``s3://``)."""

    preset: Literal["tiny", "small", "full"] = "tiny"  # CTViT + text encoder shapes (medlm.ct.modeling)
    latent_dim: int = Field(default=64, ge=2)
    # an HF text checkpoint + its tokenizer: a dir, an s3:// URI or a model store name. BERT-likes (e.g.
    # CXR-BERT, with text_pooling=cls) or a decoder (e.g. smollm2-135m-instruct: LlamaModel, with
    # text_pooling=mean)
    text_path: str | None = None
    text_pooling: Literal["cls", "mean"] = "mean"  # CT-CLIP uses CLS of a pretrained encoder
    text_trainable: bool = True  # False: the text encoder is frozen, only its projection trains
    # > 0: a small transformer (text_adapter_dim wide) trains over the text states before pooling; with a
    # frozen decoder it is what lets zero-shot prompts tell "X is present." from "X is not present."
    # (modeling.TextAdapter)
    text_adapter_layers: int = Field(default=0, ge=0)
    text_adapter_dim: int = Field(default=128, ge=8)
    # True: the text encoder reads each sentence of a report on its own (modeling.CTClipModelConfig)
    text_per_sentence: bool = False
    max_text_tokens: int = Field(default=256, ge=8)  # per text, or per sentence with text_per_sentence
    # medlm.models presets; real = whisper-tiny.en's encoder (the model store) cut to a 10 s window
    speech_preset: Literal["tiny", "small", "base", "large", "real"] = "tiny"
    speech_encoder_type: Literal["whisper", "wav2vec2"] = "whisper"
    speech_encoder_path: str | None = None  # a dir, an s3:// URI or a model store name (whisper-tiny.en)
    # Whisper students: train only the top k encoder layers (+ final norm, projection); None = all of it
    speech_trainable_layers: int | None = Field(default=None, ge=0)
    audio_window_seconds: float = 20.0


def build_teacher(spec: CTModelSpec):
    """(CTClipModel, tokenizer) from the preset, or with the text encoder's real weights from
    ``text_path``."""
    local = resolve_checkpoint(spec.text_path) if spec.text_path else None  # store name, dir or s3:// URI
    tok = build_text_tokenizer(local)
    text_model = None
    if local:
        text_config = AutoConfig.from_pretrained(local)
        text_model = AutoModel.from_pretrained(local, **text_model_kwargs(text_config))
        if tok.pad_token is None:  # decoders (SmolLM2 has one; others may not)
            tok.pad_token = tok.eos_token
    else:
        text_config = BertConfig(
            vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TEXT_PRESETS[spec.preset]
        )
    cfg = CTClipModelConfig(
        vision=CTVIT_PRESETS[spec.preset],
        text_config=text_config,
        latent_dim=spec.latent_dim,
        text_pooling=spec.text_pooling,
        text_trainable=spec.text_trainable,
        text_adapter_layers=spec.text_adapter_layers,
        text_adapter_dim=spec.text_adapter_dim,
        text_per_sentence=spec.text_per_sentence,
    )
    return CTClipModel(cfg, text_model=text_model), tok


def teacher_text_inputs(teacher, tokenizer, texts: list[str], spec: CTModelSpec) -> dict:
    return text_inputs(tokenizer, texts, spec.max_text_tokens, teacher.config.text_per_sentence)


def speech_model_spec(spec: CTModelSpec):
    """The student's ``medlm.models`` spec, preset defaults (``real``: whisper-tiny.en, 10 s) and store
    names resolved."""
    return resolve_spec(
        ModelSpec(
            preset=spec.speech_preset,
            encoder_type=spec.speech_encoder_type,
            encoder_path=spec.speech_encoder_path,
        )
    )


def build_student(spec: CTModelSpec):
    mspec = speech_model_spec(spec)
    enc_cfg = encoder_config(mspec)
    encoder = build_audio_encoder(enc_cfg, mspec.encoder_path) if mspec.encoder_path else None
    cfg = SpeechCTConfig(
        encoder_config=enc_cfg, latent_dim=spec.latent_dim, audio_window_seconds=spec.audio_window_seconds
    )
    model = SpeechCTModel(cfg, encoder=encoder)
    k = spec.speech_trainable_layers
    if k is not None:
        inner = model.encoder.model
        if not hasattr(inner, "layers") or not hasattr(inner, "layer_norm"):
            raise ValueError("speech_trainable_layers needs a Whisper encoder (layers + layer_norm)")
        inner.requires_grad_(False)
        for layer in list(inner.layers)[len(inner.layers) - k :] if k else []:
            layer.requires_grad_(True)
        inner.layer_norm.requires_grad_(True)
    return model
