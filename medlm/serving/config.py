"""Typed arguments of the Serve application (``build_app(args)``; ``serve/config.yaml``'s ``args:``) and the
one source of its deployment shape (``DEPLOYMENTS``; ``serve/config.yaml``'s ``deployments:`` is generated
from it by ``medlm serve config``)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from medlm.config import Section


class Limits(Section):
    """Request limits enforced by the ingress before any model sees the request."""

    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_audio_seconds: float = Field(default=60.0, gt=0)  # per audio input
    max_audio_parts: int = Field(default=8, ge=1)  # audio inputs per request
    max_turns: int = Field(default=32, ge=1)  # messages per chat request
    max_text_chars: int = Field(default=32_000, ge=1)  # all text of a request together
    max_tokens: int = Field(default=512, ge=1)  # completion tokens a client may ask for
    default_max_tokens: int = Field(default=128, ge=1)  # when the client does not say
    # the Realtime API (/v1/realtime): one message's size, a session's length, seconds without a client
    # message, bad messages in a row before the server closes the socket (a turn's audio: max_audio_seconds)
    realtime_max_message_bytes: int = Field(default=1024 * 1024, ge=1024)
    realtime_max_session_seconds: float = Field(default=3600.0, gt=0)
    realtime_idle_seconds: float = Field(default=300.0, gt=0)
    realtime_max_bad_messages: int = Field(default=5, ge=1)


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


class SafetyOptions(Section):
    """The safety screen (``medlm.models.triage``): every patient turn, typed or spoken, is screened by the
    SpeechEncoder replica before the LLM sees it. ``emergency`` makes the reply lead with the emergency
    instruction (spoken first when the reply is spoken); ``harmful`` gets a refusal instead of a generation.
    ``triage_dir``: a ``medlm train triage`` export (None: turns are not screened, logged at start-up).
    A screen that fails (its replica unreachable) fails open: the reply goes out unscreened, with a logged
    warning and ``ray_medlm_screen_failures_total``; a consultation is never blocked by the screen."""

    triage_dir: str | None = None
    emergency_number: str = Field(default="911", pattern=r"^[0-9]{2,6}$")  # 911 / 112 / 999 / ...


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
    # each model deployment's own batching (its concurrency follows from it: ``deployment_options``)
    encoder_batching: BatchOptions = BatchOptions()  # SpeechEncoder
    llm_batching: GenerationOptions = GenerationOptions()
    asr_batching: BatchOptions = BatchOptions()  # WhisperTranscriber (``asr_model``)
    speaker_batching: BatchOptions = BatchOptions()  # Speaker (spoken replies)
    speech: SpeechOptions = SpeechOptions()
    safety: SafetyOptions = SafetyOptions()
    log_payloads: bool = False  # never log audio / transcripts unless explicitly turned on


# --- the deployment shape: one source -----------------------------------------------------------------------

# Serve's options for every deployment of the app. ``build_app`` applies them (so ``medlm serve`` /
# ``run_local`` deploy this shape; the ``@serve.deployment`` decorators carry no sizes) and
# ``serve/config.yaml``'s ``deployments:`` list is generated from them (``medlm serve config``; a test fails
# when the file is stale), so ``serve run serve/config.yaml`` and the RayService rendered from it deploy the
# same shape. A deployment with batching options (``BATCHING``) takes its concurrency from them:
# ``max_ongoing_requests`` = 2 x ``max_batch_size`` (a replica can fill the next batch while one runs) and
# autoscaling's ``target_ongoing_requests`` = ``max_batch_size`` (one full batch per replica). GPU clusters
# replace ``ray_actor_options`` per environment (``infra/values/<env>.yaml``, ``serve.deployments``).
DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "Ingress": {
        "max_ongoing_requests": 64,
        "ray_actor_options": {"num_cpus": 0.1},
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 32},
    },
    "SpeechEncoder": {
        "ray_actor_options": {"num_cpus": 0.25},
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4},
    },
    "LLM": {
        "ray_actor_options": {"num_cpus": 0.25},
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4},
    },
    "WhisperTranscriber": {
        "ray_actor_options": {"num_cpus": 0.25},
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 2},
    },
    "Speaker": {
        "ray_actor_options": {"num_cpus": 0.25},
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4},
    },
    "CTRetriever": {
        "max_ongoing_requests": 8,
        "ray_actor_options": {"num_cpus": 0.25},
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4},
    },
}
BATCHING = {
    "SpeechEncoder": "encoder_batching",
    "LLM": "llm_batching",
    "WhisperTranscriber": "asr_batching",
    "Speaker": "speaker_batching",
}  # deployment -> the AppArgs field of its batching options
_NOTES = {
    "SpeechEncoder": "GPU clusters: {num_cpus: 1, num_gpus: 0.25}",
    "LLM": "GPU clusters: {num_cpus: 1, num_gpus: 1}",
    "Speaker": "CPU only: Piper on onnxruntime, espeak-ng",
}  # comments in the generated config


def deployed(args: AppArgs) -> list[str]:
    """The deployments the app runs with ``args``, in order (the ASR baseline, spoken replies and CT retrieval
    only when ``args`` turn them on)."""
    return (
        ["Ingress", "SpeechEncoder", "LLM"]
        + (["WhisperTranscriber"] if args.asr_model else [])
        + (["Speaker"] if args.speech.enabled else [])
        + (["CTRetriever"] if args.ct_index_dir else [])
    )


def deployment_options(args: AppArgs) -> dict[str, dict[str, Any]]:
    """Deployment name -> its Serve options (``max_ongoing_requests``, ``ray_actor_options``,
    ``autoscaling_config``) for every deployment the app runs with ``args``: ``DEPLOYMENTS``, with each
    batching deployment's concurrency from its batching options."""
    out = {}
    for name in deployed(args):
        opts = copy.deepcopy(DEPLOYMENTS[name])
        if name in BATCHING:
            size = getattr(args, BATCHING[name]).max_batch_size
            opts["max_ongoing_requests"] = 2 * size
            opts["autoscaling_config"]["target_ongoing_requests"] = size
        out[name] = {k: opts[k] for k in ("max_ongoing_requests", "ray_actor_options", "autoscaling_config")}
    return out


# serve/config.yaml: the lines between these markers are generated (``generate_serve_config``)
GENERATED_BEGIN = "# >>> generated by `medlm serve config`"
GENERATED_END = "# <<< end of the generated deployments"
IMPORT_PATH = "medlm.serving.app:build_app"


def _flow(value: Any) -> str:
    import yaml

    if isinstance(value, dict):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return str(value)


def render_deployments(args: AppArgs, indent: str = "  ") -> str:
    """The ``deployments:`` list of a Serve config for the app with ``args``
    (YAML, one flow mapping a line)."""
    lines = [f"{indent}deployments:"]
    for name, opts in deployment_options(args).items():
        lines.append(f"{indent}- name: {name}")
        for key, value in opts.items():
            note = (
                f"2 x {BATCHING[name]}.max_batch_size"
                if key == "max_ongoing_requests" and name in BATCHING
                else _NOTES.get(name)
                if key == "ray_actor_options"
                else None
            )
            line = f"{indent}  {key}: {_flow(value)}"
            lines.append(f"{line:<{len(indent) + 42}} # {note}" if note else line)
    return "\n".join(lines) + "\n"


def generate_serve_config(text: str) -> str:
    """``text`` (a Serve config such as ``serve/config.yaml``) with the ``deployments:`` list of its medlm
    application regenerated, between the ``GENERATED_BEGIN`` / ``GENERATED_END`` marker lines, from
    ``DEPLOYMENTS`` and the application's own ``args``; everything else is left as it is."""
    import yaml

    from medlm.config import ConfigError

    apps = [
        a
        for a in (yaml.safe_load(text) or {}).get("applications") or []
        if a.get("import_path") == IMPORT_PATH
    ]
    if len(apps) != 1:
        raise ConfigError(f"the Serve config has {len(apps)} applications of {IMPORT_PATH}; expected one")
    args = AppArgs.model_validate(apps[0].get("args") or {})
    block = re.search(
        rf"^([ \t]*){re.escape(GENERATED_BEGIN)}[^\n]*\n.*?^[ \t]*{re.escape(GENERATED_END)}[^\n]*(\n|\Z)",
        text,
        re.MULTILINE | re.DOTALL,
    )
    if block is None:
        raise ConfigError(
            f"the Serve config has no generated block (a line starting {GENERATED_BEGIN!r} and one "
            f"starting {GENERATED_END!r}, at the indentation of the application's keys)"
        )
    indent = block.group(1)
    generated = (
        f"{indent}{GENERATED_BEGIN} from medlm.serving.config.DEPLOYMENTS and the args above:\n"
        f"{indent}# edit those and rerun it, not this list (a test fails when it is stale)\n"
        f"{render_deployments(args, indent)}{indent}{GENERATED_END}\n"
    )
    return text[: block.start()] + generated + text[block.end() :]


def write_serve_config(path: str | Path = "serve/config.yaml", check: bool = False) -> bool:
    """Regenerate the ``deployments:`` list of the Serve config at ``path`` (``generate_serve_config``); with
    ``check`` only compare. Returns whether the file differs (differed) from the generated text."""
    path = Path(path)
    text = path.read_text()
    new = generate_serve_config(text)
    if new != text and not check:
        path.write_text(new)
    return new != text
