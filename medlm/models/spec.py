"""``ModelSpec`` (the ``model:`` section of every job config) and the preset shapes.

A preset fixes the encoder and LLM shapes; everything else in the spec (LoRA, adapter, classifier,
KD, which parameters train) applies on top of any preset. Nothing here touches the network:
``base``/``large`` are the shapes of whisper-small + Qwen2.5-0.5B-Instruct and whisper-large-v3 +
Qwen2.5-7B-Instruct, built from config (random or meta weights) unless ``encoder_path``/``llm_path``
point at real checkpoints (local dirs or ``s3://`` URIs). ``real`` is the pretrained parts of the local
model store (whisper-tiny.en + SmolLM2-135M-Instruct, ``medlm models fetch``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from medlm.config import Section

# Whisper encoder shapes. max_source_positions fixes the window: 50 positions per second.
_WHISPER = {
    "tiny": {
        "d_model": 64,
        "encoder_layers": 2,
        "encoder_attention_heads": 4,
        "encoder_ffn_dim": 128,
        "num_mel_bins": 80,
        "max_source_positions": 500,
    },  # 10 s window
    "small": {
        "d_model": 256,
        "encoder_layers": 4,
        "encoder_attention_heads": 4,
        "encoder_ffn_dim": 1024,
        "num_mel_bins": 80,
        "max_source_positions": 500,
    },  # 10 s window
    "base": {
        "d_model": 768,
        "encoder_layers": 12,
        "encoder_attention_heads": 12,
        "encoder_ffn_dim": 3072,
        "num_mel_bins": 80,
        "max_source_positions": 1500,
    },  # whisper-small, 30 s window
    "large": {
        "d_model": 1280,
        "encoder_layers": 32,
        "encoder_attention_heads": 20,
        "encoder_ffn_dim": 5120,
        "num_mel_bins": 128,
        "max_source_positions": 1500,
    },  # whisper-large-v3
}

# wav2vec2 / HuBERT-style encoder shapes (raw waveform in, 50 Hz frames out).
_WAV2VEC2 = {
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "conv_dim": (32,) * 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
    },
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
        "conv_dim": (128,) * 7,
        "num_conv_pos_embeddings": 32,
        "num_conv_pos_embedding_groups": 8,
    },
    "base": {},  # wav2vec2-base / hubert-base
    "large": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
        "conv_bias": True,
    },  # hubert-large
}

# Qwen2 causal LM shapes. vocab_size None = the size of the preset tokenizer.
_QWEN2 = {
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": None,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    },
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 704,
        "vocab_size": None,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    },
    "base": {
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    },  # Qwen2.5-0.5B-Instruct
    "large": {
        "hidden_size": 3584,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "intermediate_size": 18944,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
    },  # Qwen2.5-7B-Instruct
}

PRESETS: dict[str, dict[str, Any]] = {
    name: {
        "whisper": _WHISPER[name],
        "wav2vec2": _WAV2VEC2[name],
        "llm": _QWEN2[name],
        "stack_factor": {"tiny": 4, "small": 4, "base": 4, "large": 8}[name],
        "adapter_hidden": {"tiny": 128, "small": 512, "base": 2048, "large": 4096}[name],
    }
    for name in ("tiny", "small", "base", "large")
}
# Real pretrained parts (``medlm models fetch``): whisper-tiny.en's encoder (d384 x 4, cut to a 10 s
# window) + SmolLM2-135M-Instruct (h576 x 30, its own tokenizer and chat template). The shapes come from
# the checkpoints; stack 8 gives 6.25 audio embeddings per second (the alignment prototype's choice).
PRESETS["real"] = {
    "encoder_path": "whisper-tiny.en",
    "llm_path": "smollm2-135m-instruct",
    "encoder_window_seconds": 10.0,
    "stack_factor": 8,
    "adapter_hidden": 2048,
}


class ModelSpec(Section):
    """Which SpeechLM to build and which of its parameters train.

    The one declaration of these fields: ``SpeechLMConfig.SPEC_FIELDS`` (LoRA, heads, loss weights, trainable)
    are carried into the model's config as they are and take their defaults from here."""

    preset: Literal["tiny", "small", "base", "large", "real"] = "tiny"
    # HF Whisper / wav2vec2 checkpoint: a dir, an s3:// URI, or a model store name (`medlm models list`);
    # preset real defaults to whisper-tiny.en
    encoder_path: str | None = None
    # HF causal LM checkpoint (its tokenizer and chat template are used), as encoder_path; preset real:
    # smollm2-135m-instruct
    llm_path: str | None = None
    # Whisper only: a shorter window than the checkpoint's (the position table is cut), in whole seconds;
    # None = the checkpoint's (30 s for real Whisper) or the preset's (10 s for real)
    encoder_window_seconds: float | None = Field(default=None, gt=0)
    # a medlm export (SpeechLM.save_pretrained + processor); the structure comes from it: a structural field
    # given here (not left at its default) must say what the export says (build.check_structure)
    init_from: str | None = None
    encoder_type: Literal["whisper", "wav2vec2"] = "whisper"
    audio_window_seconds: float = (
        20.0  # chunk length for wav2vec2 encoders (Whisper's window comes from its config)
    )
    stack_factor: int | None = Field(default=None, ge=1)  # None = preset (50 Hz / 4 = 12.5 Hz)
    adapter_hidden: int | None = Field(default=None, ge=2)  # None = preset
    lora_r: int = Field(default=0, ge=0)  # LLM LoRA rank; 0 = no LoRA
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    encoder_lora_r: int = Field(default=0, ge=0)
    encoder_lora_targets: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    num_classes: int = Field(default=0, ge=0)  # classifier head on pooled adapter output; 0 = none
    # + one output per entity label (prompts.ENTITY_LABELS: which entity types the utterance mentions, BCE):
    # the regularizer sees NER as well as sentiment; 0 = sentiment only
    num_entity_labels: int = Field(default=0, ge=0)
    classifier_weight: float = 0.1
    lm_weight: float = Field(default=1.0, ge=0.0)  # LM loss on the targets; 0 = KD only (Ultravox-style)
    kd_weight: float = Field(default=0.0, ge=0.0)  # KL to the same LLM fed the transcript; 0 = off
    kd_temperature: float = Field(default=2.0, gt=0.0)
    # CTC of each audio item's adapter output against its transcript's LLM tokens (logits = scaled cosine
    # with the LLM's input embeddings, blank = the token of " "): teaches the adapter to emit the spoken
    # words as the LLM's own embeddings, without an LLM forward (lm_weight = kd_weight = 0 skips it); 0 = off
    ctc_weight: float = Field(default=0.0, ge=0.0)
    ctc_scale: float = Field(default=20.0, gt=0.0)
    # what the LLM reads of each audio item: "none" = the adapter's frames; "ctc" = the frames compressed by
    # the CTC head (blank frames dropped, repeats merged, each run the posterior-weighted mixture of the LLM's
    # input embeddings; SpeechLM.compress). A job's choice: a run may switch it on for an export without it;
    # None = an init_from export's own setting (a fresh model: "none")
    audio_compression: Literal["none", "ctc"] | None = None
    # Regexes (re.search) over parameter names; matching parameters train, all others are frozen.
    # Names start with encoder. / adapter. / llm. / classifier.; LoRA weights contain "lora_".
    trainable: list[str] = Field(default_factory=lambda: [r"^adapter\.", r"lora_", r"^classifier\."])
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


def field_default(name: str) -> Any:
    """The default of ``ModelSpec``'s field ``name`` (a fresh list for list fields)."""
    return ModelSpec.model_fields[name].get_default(call_default_factory=True)
