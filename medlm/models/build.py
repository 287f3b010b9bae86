"""``ModelSpec`` -> (SpeechLM, SpeechLMProcessor).

Nothing is downloaded: weights come from the preset's config
(random init), from ``encoder_path``/``llm_path`` (HF checkpoints, local or ``s3://``), or from ``init_from``
(a medlm export holding both the model and its processor)."""

from __future__ import annotations

import contextlib
import json

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    Qwen2Config,
    Wav2Vec2Config,
    WhisperConfig,
)

from medlm import storage
from medlm.models.encoder import AudioEncoder, AudioFrontend, build_audio_encoder
from medlm.models.modeling import JOB_CHOICES, SpeechLM, SpeechLMConfig
from medlm.models.pretrained import store_path
from medlm.models.processor import SpeechLMProcessor
from medlm.models.spec import PRESETS, ModelSpec, field_default
from medlm.models.tokenizer import AUDIO_TOKEN, build_byte_tokenizer
from medlm.storage import local_copy

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_spec(spec: ModelSpec) -> ModelSpec:
    """``spec`` with its preset's checkpoint defaults filled in (preset ``real``) and model store names
    (``whisper-tiny.en``, ...) resolved to their local store directories."""
    preset = PRESETS[spec.preset]
    update = {
        k: preset[k]
        for k in ("encoder_path", "llm_path", "encoder_window_seconds")
        if getattr(spec, k) is None and preset.get(k) is not None
    }
    for key in ("encoder_path", "llm_path"):
        value = update.get(key, getattr(spec, key))
        if value is not None and store_path(value) != value:
            update[key] = store_path(value)
    return spec.model_copy(update=update) if update else spec


def encoder_config(spec: ModelSpec) -> PretrainedConfig:
    if spec.encoder_path:
        config = AutoConfig.from_pretrained(local_copy(spec.encoder_path))
        if spec.encoder_window_seconds and config.model_type == "whisper":
            positions = int(spec.encoder_window_seconds * 50)  # 50 encoder positions per second
            if positions > config.max_source_positions:
                raise ValueError(
                    f"encoder_window_seconds={spec.encoder_window_seconds} exceeds the checkpoint's "
                    f"{config.max_source_positions / 50:g} s window"
                )
            config.max_source_positions = positions
        return config
    preset = PRESETS[spec.preset]
    if spec.encoder_type == "whisper":
        return WhisperConfig(**preset["whisper"])
    return Wav2Vec2Config(**preset["wav2vec2"])


def build_tokenizer(spec: ModelSpec):
    """The LLM's tokenizer with ``<|audio|>`` added (real LLMs), or the preset byte-level BPE."""
    if not spec.llm_path:
        return build_byte_tokenizer()
    tok = AutoTokenizer.from_pretrained(local_copy(spec.llm_path))
    if AUDIO_TOKEN not in tok.get_vocab():
        tok.add_special_tokens(
            {"additional_special_tokens": [AUDIO_TOKEN]}, replace_extra_special_tokens=False
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_processor(spec: ModelSpec) -> SpeechLMProcessor:
    """The processor alone (cheap: no model weights), e.g. for Ray Data featurizing actors."""
    spec = resolve_spec(spec)
    if spec.init_from:
        return SpeechLMProcessor.from_pretrained(spec.init_from)
    return SpeechLMProcessor(
        build_tokenizer(spec), encoder_config(spec), _stack_factor(spec), spec.audio_window_seconds
    )


def _stack_factor(spec: ModelSpec) -> int:
    return spec.stack_factor or PRESETS[spec.preset]["stack_factor"]


def speechlm_config(
    spec: ModelSpec, processor: SpeechLMProcessor, text_config: PretrainedConfig | None = None
) -> SpeechLMConfig:
    """The SpeechLMConfig for ``spec``; ``text_config`` defaults to ``llm_path``'s or the preset's."""
    tok = processor.tokenizer
    if text_config is None:
        if spec.llm_path:
            text_config = AutoConfig.from_pretrained(local_copy(spec.llm_path))
        else:
            shape = dict(PRESETS[spec.preset]["llm"])
            shape["vocab_size"] = shape["vocab_size"] or len(tok)
            text_config = Qwen2Config(
                **shape, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None
            )
    return SpeechLMConfig(
        encoder_config=processor.encoder_config,
        text_config=text_config,
        audio_token_id=processor.audio_token_id,
        stack_factor=processor.stack_factor,
        adapter_hidden=spec.adapter_hidden or PRESETS[spec.preset]["adapter_hidden"],
        ctc_blank_id=processor.ctc_blank_id,
        **{name: getattr(spec, name) for name in SpeechLMConfig.SPEC_FIELDS},
    )


#: The spec fields an export fixes (``trainable`` and ``dtype`` are the job's too; ``preset`` only supplies
#: defaults): with ``init_from`` a value the spec gives must be the export's.
STRUCTURAL = (
    "encoder_type",
    "encoder_window_seconds",
    "stack_factor",
    "adapter_hidden",
    *(f for f in SpeechLMConfig.SPEC_FIELDS if f not in (*JOB_CHOICES, "trainable")),
)


def _export_value(config: SpeechLMConfig, name: str):
    """The structural field ``name`` as the export's config has it (in the spec's terms)."""
    encoder = config.encoder_config
    if name == "encoder_type":
        return "whisper" if encoder.model_type == "whisper" else "wav2vec2"
    if name == "encoder_window_seconds":  # Whisper: 50 encoder positions per second
        return encoder.max_source_positions / 50 if encoder.model_type == "whisper" else None
    return getattr(config, name)


def check_structure(spec: ModelSpec, config: SpeechLMConfig) -> None:
    """With ``init_from`` the structure comes from the export: raise a ValueError for a structural field that
    ``spec`` gives (a value other than the field's default) and the export's ``config`` contradicts, and for
    ``encoder_path`` / ``llm_path`` (other weights than the export's). Call it on the spec as given, before
    :func:`resolve_spec`: values that a preset fills in (``preset=real``'s checkpoints) are not given. A field
    left at its default counts as not given (a job config travels to the workers as a full dump, so
    ``model_fields_set`` cannot tell)."""
    for name in ("encoder_path", "llm_path"):
        if getattr(spec, name) is not None:
            raise ValueError(
                f"model.{name}={getattr(spec, name)!r} with model.init_from={spec.init_from!r}: "
                f"the export holds the weights; give one of them"
            )
    for name in STRUCTURAL:
        value = getattr(spec, name)
        if value == field_default(name):
            continue
        if name == "encoder_window_seconds":  # as encoder_config cuts the window: whole positions
            value = int(value * 50) / 50
        saved = _export_value(config, name)
        if value != saved:
            raise ValueError(
                f"model.{name}={getattr(spec, name)!r} contradicts the export "
                f"model.init_from={spec.init_from!r}, whose {name} is {saved!r}: with init_from "
                f"the structure comes from the export (leave model.{name} out or set it to {saved!r})"
            )


def check_init_from(spec: ModelSpec) -> None:
    """:func:`check_structure` against the export's ``config.json`` alone (no weights are copied): what a
    driver runs before it starts workers, so a contradicting spec fails at once and not in every worker."""
    if spec.init_from:
        config = json.loads(storage.read_text(storage.join(spec.init_from, "config.json")))
        check_structure(spec, SpeechLMConfig.from_dict(config))


def build_model(
    spec: ModelSpec | None = None, device: str | torch.device | None = None
) -> tuple[SpeechLM, SpeechLMProcessor]:
    """Build (or load) the SpeechLM and its processor for ``spec``.

    ``device="meta"`` builds the shapes without memory (parameter counting for base/large).
    With ``init_from`` the structure comes from the export (:func:`check_structure` refuses a spec that
    contradicts it); ``trainable``, ``dtype`` and the loss weights apply.
    """
    spec = spec or ModelSpec()
    dtype = _DTYPES[spec.dtype]
    if spec.init_from:
        local = local_copy(spec.init_from)
        check_structure(spec, SpeechLMConfig.from_pretrained(local))
        model = SpeechLM.from_pretrained(local, dtype=dtype)
        processor = SpeechLMProcessor.from_pretrained(local)
        # choices of the job at hand, not structure: taken from the spec (None: the export's)
        for name in JOB_CHOICES:
            if getattr(spec, name) is not None:
                setattr(model.config, name, getattr(spec, name))
        model.config.ctc_blank_id = processor.ctc_blank_id  # exports from before the CTC loss lack it
        model.configure_trainable(spec.trainable)
        _stop_at_end_of_turn(model, processor.tokenizer)
        return model, processor
    spec = resolve_spec(spec)
    processor = build_processor(spec)
    tok = processor.tokenizer
    ctx = torch.device(device) if device is not None else contextlib.nullcontext()
    with ctx:
        llm = None
        if spec.llm_path:
            llm = AutoModelForCausalLM.from_pretrained(local_copy(spec.llm_path), dtype=dtype)
            if len(tok) > llm.config.vocab_size:
                llm.resize_token_embeddings(len(tok))
        config = speechlm_config(spec, processor, llm.config if llm is not None else None)
        encoder = build_audio_encoder(config.encoder_config, spec.encoder_path) if spec.encoder_path else None
        model = SpeechLM(config, encoder=encoder, llm=llm)
        if llm is not None and device != "meta":  # audio embeddings start at the scale of the LLM's text ones
            with torch.no_grad():
                rms = llm.get_input_embeddings().weight.float().pow(2).mean(-1).sqrt().mean()
                model.adapter.norm_out.weight.fill_(float(rms))
    model.to(dtype)
    _stop_at_end_of_turn(model, tok)
    return model, processor


def build_encoder(spec: ModelSpec) -> tuple[AudioEncoder, AudioFrontend]:
    """Only the audio encoder (and its front end) the SpeechLM of ``spec`` would have: from ``init_from``'s
    audio part (the LLM's shard is never read) or from ``encoder_path``; float32, eval mode. A preset
    without an encoder checkpoint has a randomly initialised encoder, which no other build reproduces."""
    if spec.init_from:
        model = SpeechLM.from_pretrained_part(local_copy(spec.init_from), "audio")
        encoder, frontend = model.encoder, model.frontend
    else:
        spec = resolve_spec(spec)
        config = encoder_config(spec)
        encoder = build_audio_encoder(config, spec.encoder_path)
        frontend = AudioFrontend(config, spec.audio_window_seconds)
    return encoder.float().eval(), frontend


def _stop_at_end_of_turn(model: SpeechLM, tokenizer) -> None:
    """``generate`` stops at the chat template's end-of-turn token (the tokenizer's eos)."""
    gen = model.llm.generation_config
    gen.eos_token_id, gen.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
