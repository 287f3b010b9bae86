"""Typed arguments of the Serve application (``build_app(args)``; ``serve/config.yaml``'s ``args:``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medlm.config import Section


class Limits(Section):
    """Request limits enforced by the ingress before any model sees the request."""

    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_audio_seconds: float = Field(default=60.0, gt=0)    # per audio input
    max_audio_parts: int = Field(default=8, ge=1)           # audio inputs per request
    max_turns: int = Field(default=32, ge=1)                # messages per chat request
    max_text_chars: int = Field(default=32_000, ge=1)       # all text of a request together
    max_tokens: int = Field(default=512, ge=1)              # completion tokens a client may ask for
    default_max_tokens: int = Field(default=128, ge=1)      # when the client does not say


class BatchOptions(Section):
    """Dynamic batching of one deployment (``@serve.batch``); ``max_batch_size: 1`` turns it off."""

    max_batch_size: int = Field(default=8, ge=1)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)


class GenerationOptions(BatchOptions):
    """The LLM replica's decode loop (``medlm.serving.generation``): ``continuous`` lets requests join and
    leave the running batch between decode steps; ``static`` runs each batch until its longest answer ends
    (the baseline). ``max_batch_size`` rows decode together at most."""

    max_batch_size: int = Field(default=16, ge=1)
    scheduling: Literal["continuous", "static"] = "continuous"


class SpeechOptions(Section):
    """Spoken replies (``modalities: ["text", "audio"]``): the TTS deployment's voices.

    ``piper_voice`` is a model store name or a path to a Piper ``.onnx``; when it is not available the server
    speaks with espeak-ng only. ``espeak_voices``: API voice name -> espeak-ng voice id."""

    enabled: bool = True
    piper_voice: str | None = "piper-joe"
    espeak_voices: dict[str, str] = Field(default_factory=lambda: {"en-us": "en-us", "en-gb": "en-gb"})
    default_voice: str | None = None  # None: the Piper voice if there is one, else the first espeak-ng voice


class AppArgs(Section):
    """Where the models come from and how the API behaves.

    ``model_dir`` is a training run's export (``SpeechLM.save_pretrained`` + processor; local or ``s3://``);
    ``adapters_dir`` holds LoRA adapter exports, one sub-directory per model id (the OpenAI ``model`` field);
    ``ct_index_dir`` a saved ``CTIndex``. The API key is read from the environment variable ``api_key_env``
    (or given as its SHA-256 in ``api_key_sha256``, so the key itself never enters a config).
    """

    model_dir: str
    served_model_name: str = "medlm"
    adapters_dir: str | None = None
    ct_index_dir: str | None = None
    # a Whisper checkpoint served as the ASR baseline: `/v1/audio/transcriptions` with this as `model`
    # (a model store name, a local dir or s3://); None = not served
    asr_model: str | None = None
    api_key_env: str = "MEDLM_API_KEY"
    api_key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    limits: Limits = Limits()
    encoder_batching: BatchOptions = BatchOptions()
    llm_batching: GenerationOptions = GenerationOptions()
    speech: SpeechOptions = SpeechOptions()
    log_payloads: bool = False  # never log audio / transcripts unless explicitly turned on
