#!/usr/bin/env bash
# The README's main job: set up (idempotent), then run `medlm demo` on embedded defaults
# (local Ray, a local moto S3 server, tiny models, synthetic data). Extra args go to `medlm demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec medlm demo "$@"
