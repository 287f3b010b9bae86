#!/usr/bin/env bash
# The README's test command: set up from the lock (idempotent), lint (ruff check + format check), then run the
# whole suite: fast unit tests
# and the slow integration tests (local Ray, moto S3 server, DeepSpeed on 2 CPU workers, a Serve app,
# the real checkpoints). Extra args go to pytest.
#
#   ./scripts/test.sh --latest [pytest args]   drift check: a separate venv (.venv-latest) with the newest
#       releases pyproject.toml's ranges allow (torch stays the local CPU build), prints every package whose
#       version differs from requirements/lock.txt, then runs the fast suite (-m "not slow") there.
#       Informational: CI runs only the locked suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "${1:-}" = --latest ]; then
  shift
  ./scripts/setup.sh >/dev/null   # the model store (and espeak-ng) come from the normal setup
  UV=$(./scripts/uv.sh)
  rm -rf .venv-latest && "$UV" venv -q --python "$(command -v python3)" .venv-latest
  "$UV" pip install -q --python .venv-latest/bin/python --find-links "${MEDLM_FIND_LINKS:-/opt/wheels}" \
      -c requirements/torch-cpu.txt --upgrade -e '.[test]'
  echo "== versions that differ from requirements/lock.txt (package: locked -> latest)"
  "$UV" pip freeze --python .venv-latest/bin/python --exclude-editable > .venv-latest/freeze.txt
  .venv/bin/python - <<'PY'
import re
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = dict(m.groups() for m in re.finditer(r"^([A-Za-z0-9][\w.-]*)==([^\s\\]+)", open("requirements/lock.txt").read(), re.M))
locked = {norm(k): v for k, v in locked.items()}
latest = {norm(k): v for k, v in (l.strip().split("==", 1) for l in open(".venv-latest/freeze.txt") if "==" in l)}
diff = [(n, locked.get(n, "-"), latest.get(n, "-")) for n in sorted(set(locked) | set(latest)) if locked.get(n) != latest.get(n)]
for n, a, b in diff:
    print(f"  {n}: {a} -> {b}")
print(f"  ({len(diff)} of {len(latest)} packages differ)")
PY
  exec .venv-latest/bin/python -m pytest -m "not slow" "$@"
fi
./scripts/setup.sh
if ! command -v chromium >/dev/null; then   # the consultation page's test drives Debian's chromium
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; } ||
    echo "chromium could not be installed: the browser test will skip" >&2
fi
. .venv/bin/activate
ruff check . && ruff format --check . || { echo "ruff: run 'ruff check --fix . && ruff format .'" >&2; exit 1; }
exec python -m pytest "$@"
