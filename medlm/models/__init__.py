"""SpeechLM: audio encoder + frame-stacking adapter + causal LLM (LoRA), processor, presets, builder."""

from medlm.models.build import build_model, build_processor
from medlm.models.encoder import AudioEncoder, AudioFrontend, build_audio_encoder
from medlm.models.modeling import (
    SpeechLM,
    SpeechLMConfig,
    SpeechLMOutput,
    replace_placeholders_and_build_targets,
)
from medlm.models.processor import SpeechLMProcessor
from medlm.models.spec import PRESETS, ModelSpec

__all__ = [
    "PRESETS",
    "AudioEncoder",
    "AudioFrontend",
    "ModelSpec",
    "SpeechLM",
    "SpeechLMConfig",
    "SpeechLMOutput",
    "SpeechLMProcessor",
    "build_audio_encoder",
    "build_model",
    "build_processor",
    "replace_placeholders_and_build_targets",
]
