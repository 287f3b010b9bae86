"""LoRA adapters of the LLM as exports (peft's format) and their activation in a loaded SpeechLM.

An adapter export is a directory with ``adapter_config.json`` + ``adapter_model.safetensors`` (keys relative
to the LLM, as peft writes them). A directory of exports holds one sub-directory per model id; the OpenAI
``model`` field names one. All adapters of a server share the base export's encoder and audio adapter.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from medlm import storage

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def save_adapter(model, directory: str, adapter_name: str = "default") -> None:
    """Export the LLM's LoRA adapter ``adapter_name`` of a SpeechLM to ``directory`` (local or ``s3://``)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    llm = model.llm
    if adapter_name not in getattr(llm, "peft_config", {}):
        raise ValueError(f"the model's LLM has no LoRA adapter {adapter_name!r} (build it with lora_r > 0)")
    with tempfile.TemporaryDirectory() as tmp:
        llm.peft_config[adapter_name].save_pretrained(tmp)
        state = {
            k: v.detach().contiguous().cpu()
            for k, v in get_peft_model_state_dict(llm, adapter_name=adapter_name).items()
        }
        save_file(state, str(Path(tmp) / ADAPTER_WEIGHTS))
        storage.copy_tree(tmp, directory)


def list_adapters(adapters_dir: str | None) -> list[str]:
    """Model ids (sub-directory names) of the adapter exports under ``adapters_dir``."""
    if not adapters_dir or not storage.exists(adapters_dir):
        return []
    ids = {f.rstrip("/").split("/")[-2] for f in storage.list_files(adapters_dir, suffix=ADAPTER_CONFIG)}
    return sorted(ids)


def load_adapter(model, directory: str, name: str) -> None:
    """Add the adapter export at ``directory`` to the SpeechLM's LLM under ``name``
    (inactive until activated)."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    local = Path(storage.local_copy(directory))
    config = LoraConfig.from_pretrained(str(local))
    inject_adapter_in_model(config, model.llm, adapter_name=name)
    result = set_peft_model_state_dict(model.llm, load_file(str(local / ADAPTER_WEIGHTS)), adapter_name=name)
    if result.unexpected_keys:
        raise ValueError(
            f"adapter {name!r} does not fit the served model: unexpected {result.unexpected_keys[:3]}"
        )


def _tuner_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.llm.modules() if isinstance(m, BaseTunerLayer)]


def activate_adapter(model, name: str | None) -> None:
    """Use LoRA adapter ``name`` for the next forward passes; ``None`` = the base export as trained."""
    base = "default" if "default" in getattr(model.llm, "peft_config", {}) else None
    name = name or base
    for layer in _tuner_layers(model):
        if name is None:
            layer.enable_adapters(False)
        else:
            layer.enable_adapters(True)
            layer.set_adapter(name)


def unload_adapter(model, name: str) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in _tuner_layers(model):
        if isinstance(layer, BaseTunerLayer) and name in layer.lora_A:
            layer.delete_adapter(name)
    getattr(model.llm, "peft_config", {}).pop(name, None)
