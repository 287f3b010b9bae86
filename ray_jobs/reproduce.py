"""The reproductions as a Ray job: `python ray_jobs/reproduce.py [--preset tiny] [--only speechllm ...]`, the
same flags as `python -m recipes.reproduce run`; also runs unchanged under
`ray job submit --working-dir . -- python ray_jobs/reproduce.py --preset small`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir of `ray job submit`

from recipes.reproduce import app  # noqa: E402

if __name__ == "__main__":
    app(args=["run", *sys.argv[1:]], prog_name="ray_jobs/reproduce.py")
