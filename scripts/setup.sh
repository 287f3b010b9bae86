#!/usr/bin/env bash
# Set up medlm on a fresh Debian machine with Python 3.11: apt packages, a venv in .venv, pip packages.
# Idempotent: re-running only installs what is missing.
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
python -m pip install -q -U pip
# CPU machines keep the CPU build of torch (constraints.txt); on a GPU machine install the CUDA
# build of torch first and run with MEDLM_TORCH=skip.
if [ "${MEDLM_TORCH:-cpu}" = cpu ]; then
  python -m pip install -q -c constraints.txt torch
  python -m pip install -q -c constraints.txt -e '.[test]'
else
  python -m pip install -q -e '.[test]'
fi
python -c "import medlm, torch, ray, deepspeed, transformers, peft; print('medlm env ok: torch', torch.__version__, 'ray', ray.__version__)"
