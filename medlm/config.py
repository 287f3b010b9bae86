"""Typed job configs: YAML file -> pydantic object (+ ``key.sub=value`` overrides) -> YAML.

Every section derives from :class:`Section`, which rejects unknown keys, so a typo in a YAML file
or on the command line fails loudly instead of being silently ignored::

    cfg = load_config(TrainJobConfig, "configs/stage1.yaml", ["optim.lr=3e-4", "model.preset=small"])
    print(dump_config(cfg))
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


def _config_dir() -> Path:
    """Where the default job configs (the repository's ``configs/``) are.

    From a source tree (a checkout, editable or not installed, the copy ``ray job submit --working-dir``
    uploads, the image's /home/ray/medlm) it is the ``configs/`` beside this package, so the configs always
    belong to the code that runs. An installed wheel carries them as the package data ``medlm.configs``
    (pyproject.toml maps that package to ``configs/``), found through importlib.resources.
    """
    tree = Path(__file__).resolve().parent.parent
    if (tree / "pyproject.toml").is_file() and (tree / "configs").is_dir():
        return tree / "configs"
    try:
        return Path(str(importlib.resources.files("medlm.configs")))
    except ModuleNotFoundError:  # neither: the error of a lookup names this path
        return tree / "configs"


CONFIG_DIR = _config_dir()

T = TypeVar("T", bound="Section")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message says where and why."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> ``(["optim", "lr"], 3e-4)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict (a copy); intermediate dicts are created."""
    out = _deepcopy(data)
    for item in overrides or []:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return out


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, or relative to the project's ``configs/`` directory (also when it is
    written ``configs/<file>`` and the working directory has no ``configs/``, as with an installed medlm)."""
    p = Path(path)
    if p.exists():
        return p
    if not p.is_absolute() and p.parts[:1] == ("configs",):
        p = Path(*p.parts[1:])
    for candidate in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if candidate.exists():
            return candidate
    raise ConfigError(f"config file {str(path)!r} not found (also looked in {CONFIG_DIR})")


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = resolve_config_path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def build_config(
    cls: type[T], data: dict[str, Any], overrides: list[str] | None = None, source: str = "config"
) -> T:
    """Validate ``data`` (+ overrides) as ``cls``; errors name every offending key."""
    merged = apply_overrides(data, overrides)
    try:
        return cls.model_validate(merged)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "<root>"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {loc}: {msg}")
        raise ConfigError(f"invalid {cls.__name__} from {source}:\n" + "\n".join(lines)) from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) with overrides applied."""
    data = read_yaml(path) if path else {}
    return build_config(cls, data, overrides, source=str(path) if path else "defaults")


def config_to_dict(cfg: Section) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def dump_config(cfg: Section) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
