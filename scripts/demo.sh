#!/usr/bin/env bash
# The README's main job: set up (idempotent), then run the demo (recipes/demo.py) on embedded defaults
# (local Ray, a local moto S3 server, the real pretrained parts, synthetic data). Extra args go to it (--preset tiny).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec python -m recipes.demo "$@"
