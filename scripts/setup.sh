#!/usr/bin/env bash
# Set up medlm on a fresh Debian machine with Python 3.11: apt packages, a venv in .venv with exactly the
# packages of requirements/lock.txt (hash-checked), medlm itself (editable), and the real pretrained
# checkpoints (`medlm models fetch`). Idempotent: a re-run with an unchanged lock only checks the models.
# MEDLM_TORCH=skip: a GPU machine that installed its CUDA torch into .venv first (the lock's other
# packages are then installed without torch's CPU pin). MEDLM_MODELS=skip: no model fetch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq espeak-ng sox libsndfile1 >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip() { python -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }  # index noise
stamp=.venv/.medlm-lock.sha256
want="$(cat requirements/lock.txt pyproject.toml | sha256sum | cut -d' ' -f1) torch=${MEDLM_TORCH:-cpu}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if [ "${MEDLM_TORCH:-cpu}" = cpu ]; then
    pip install -q --require-hashes -r requirements/lock.txt
  else   # keep the CUDA torch already installed: every other locked package, exactly, without dependencies
    pip install -q --require-hashes --no-deps -r <(awk '/^torch==/{s=1;next} s&&/^ /{next} {s=0;print}' requirements/lock.txt)
  fi
  pip install -q --no-deps -e .
  extra=$(python - <<'PY'   # packages a reused venv holds that the lock no longer lists
import re, importlib.metadata as md
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {norm(m) for m in re.findall(r"^([A-Za-z0-9][\w.-]*)==", open("requirements/lock.txt").read(), re.M)}
keep = locked | {"medlm", "pip", "setuptools", "wheel"}
print(" ".join(sorted({norm(d.metadata["Name"]) for d in md.distributions()} - keep)))
PY
)
  [ -z "$extra" ] || { echo "removing packages not in the lock: $extra"; pip uninstall -q -y $extra; }
  pip check
  echo "$want" > "$stamp"
fi
python -c "import medlm, torch, ray, deepspeed, transformers, peft; print('medlm env ok: torch', torch.__version__, 'ray', ray.__version__, 'transformers', transformers.__version__)"
[ "${MEDLM_MODELS:-fetch}" = skip ] || medlm models fetch
