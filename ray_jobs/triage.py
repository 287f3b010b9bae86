"""Entry point for the `triage` job: `python ray_jobs/triage.py [--config FILE] [key=value ...]`.

Also runs unchanged under `ray job submit --working-dir . -- python ray_jobs/triage.py ...`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir of `ray job submit`

from medlm.cli import job_app  # noqa: E402

if __name__ == "__main__":
    job_app("triage")()
