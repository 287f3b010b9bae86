#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run the whole suite — fast unit tests and
# the slow integration tests (local Ray, moto S3 server, DeepSpeed on 2 CPU workers, a Serve app).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec python -m pytest "$@"
