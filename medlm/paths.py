"""Every default path of medlm and every ``MEDLM_*`` environment variable (read here and nowhere else).

=================  ==============================  ===========================================================
variable           default                         what lives there
=================  ==============================  ===========================================================
``MEDLM_HOME``     ``~/.cache/medlm``              medlm's own state: ``stack/`` (``medlm stack up``),
                                                   ``cluster/`` (``cluster/local.py``), ``tokenizers/`` (the
                                                   presets' tokenizer), ``serve-defaults/`` (the default
                                                   export of ``medlm serve``)
``MEDLM_MODELS``   ``~/.cache/medlm/models``       the model store (``medlm models fetch``); not under
                                                   ``MEDLM_HOME``, so a throw-away home keeps the fetched
                                                   models
``MEDLM_CACHE``    ``<tmp>/medlm-cache``           local copies of ``s3://`` trees (``storage.local_copy``)
``MEDLM_STACK``    unset                           ``external``: jobs never start the embedded local stack
``MEDLM_FAULT_``   unset                           ``<step>``: the last training rank fails once at that step
``AT_STEP``                                        (fault injection for the recovery tests)
``MEDLM_MEDSAFE``  ``<repo>/third_party/``         MedSafetyBench (the safety screen's harmful requests)
``TYBENCH``        ``medsafetybench``
=================  ==============================  ===========================================================

The variables are read when a function is called (not at import), so setting one in a running process
takes effect. This module imports nothing from medlm: every layer may use it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

HOME_ENV, MODELS_ENV, CACHE_ENV = "MEDLM_HOME", "MEDLM_MODELS", "MEDLM_CACHE"
STACK_ENV, FAULT_ENV = "MEDLM_STACK", "MEDLM_FAULT_AT_STEP"
MEDSAFETYBENCH_ENV = "MEDLM_MEDSAFETYBENCH"


def _default_home() -> Path:
    return Path.home() / ".cache" / "medlm"


def home() -> Path:
    """``$MEDLM_HOME``, default ``~/.cache/medlm``."""
    return Path(os.environ.get(HOME_ENV) or _default_home())


def stack_dir() -> Path:
    """State of ``medlm stack up`` (pid / session ids, logs): ``$MEDLM_HOME/stack``."""
    return home() / "stack"


def cluster_dir() -> Path:
    """State of a multi-node ``cluster/local.py up``: ``$MEDLM_HOME/cluster``."""
    return home() / "cluster"


def tokenizer_dir() -> Path:
    """The presets' byte-level tokenizers, by content hash: ``$MEDLM_HOME/tokenizers``."""
    return home() / "tokenizers"


def serve_defaults_dir() -> Path:
    """The default exports ``medlm serve`` serves without ``--model``: ``$MEDLM_HOME/serve-defaults``."""
    return home() / "serve-defaults"


def model_store() -> Path:
    """The model store: ``$MEDLM_MODELS``, default ``~/.cache/medlm/models`` (whatever ``MEDLM_HOME`` is)."""
    return Path(os.environ.get(MODELS_ENV) or _default_home() / "models")


def download_cache() -> Path:
    """Local copies of ``s3://`` trees: ``$MEDLM_CACHE``, default ``<tmp>/medlm-cache``."""
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "medlm-cache")


def external_stack() -> bool:
    """``MEDLM_STACK=external``: S3 and the Ray cluster come from outside; never start the local stack."""
    return os.environ.get(STACK_ENV) == "external"


def fault_at_step() -> int:
    """``MEDLM_FAULT_AT_STEP``: the step at which the last training rank fails once (-1: never)."""
    return int(os.environ.get(FAULT_ENV) or -1)


def medsafetybench_dir() -> Path:
    """MedSafetyBench: ``$MEDLM_MEDSAFETYBENCH``, default the source tree's ``third_party/medsafetybench``."""
    default = Path(__file__).resolve().parents[1] / "third_party" / "medsafetybench"
    return Path(os.environ.get(MEDSAFETYBENCH_ENV) or default)
