"""The README's "Using it" block, typed in order in one clean shell, works as written.

Only the step counts are lowered (overrides appended to the training commands, as the README allows), and
`medlm serve` runs in the background until a chat request through it has been answered."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FEW_STEPS = "optim.steps=2 optim.checkpoint_every=2 optim.log_every=1"


def using_it_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using it") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_block_is_what_this_test_knows_how_to_run():
    lines = using_it_block()
    assert lines[0] == "source .venv/bin/activate" and lines[-1] == "medlm stack down"
    assert any(line.startswith("medlm stack up") for line in lines)
    assert sum(line.startswith("medlm serve") for line in lines) == 1
    assert all("<" not in line for line in lines), "placeholders cannot be typed as written"


def script(lines: list[str], log_dir: Path) -> str:
    venv = Path(sys.executable).parent.parent
    out = ["set -euo pipefail", f"cd {ROOT}", "trap 'medlm stack down >/dev/null 2>&1 || true' EXIT"]
    for line in lines:
        if line == "source .venv/bin/activate":
            out.append(f"source {venv}/bin/activate")
        elif line.startswith("medlm serve"):
            log = log_dir / "serve.log"
            out += [
                f"{line} > {log} 2>&1 &",
                "SERVE=$!",
                f"for i in $(seq 300); do grep -q 'serving on' {log} && break; sleep 1; done",
                f"URL=$(sed -n 's/^serving on //p' {log}); KEY=$(sed -n 's/^generated API key.*: //p' {log})",
                "curl -sf -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json' "
                '-d \'{"model": "medlm", "max_tokens": 4, "messages": [{"role": "user", '
                '"content": "I have a cough."}]}\' "$URL/chat/completions" > ' + str(log_dir / "answer.json"),
                "kill -TERM $SERVE; wait $SERVE || true",
            ]
        elif line.startswith("medlm train") or "ray_jobs/" in line:
            out.append(f"{line} {FEW_STEPS}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_using_it_runs_as_written_in_a_clean_shell(tmp_path):
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MEDLM_"))}
    env.update(MEDLM_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if os.environ.get("MEDLM_MODELS"):
        env["MEDLM_MODELS"] = os.environ["MEDLM_MODELS"]
    text = script(using_it_block(), tmp_path)
    proc = subprocess.run(["bash", "-c", text], env=env, capture_output=True, text=True, timeout=1150)
    tail = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, tail
    assert "optim:" in proc.stdout and "lr: 0.0003" in proc.stdout  # `medlm config show ... optim.lr=3e-4`
    assert "succeeded" in proc.stdout, tail  # ray job submit
    answer = json.loads((tmp_path / "answer.json").read_text())
    assert answer["choices"][0]["message"]["content"] is not None
    assert "stopped" in proc.stdout  # medlm stack down
