#!/usr/bin/env bash
# Prints the path of a uv binary (the lock tool), installing it into .uv/ on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v uv >/dev/null; then command -v uv; exit 0; fi
[ -x .uv/bin/uv ] || { python3 -m venv .uv && .uv/bin/pip install -q uv 2> >(grep -v 'is ignored: it is neither' >&2); }
echo "$PWD/.uv/bin/uv"
