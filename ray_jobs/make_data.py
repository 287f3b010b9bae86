"""Write every synthetic shard kind (text/speech dialogues, utterances, CT) under an output root.

    python ray_jobs/make_data.py --config configs/make_data.yaml output=s3://medlm/data consultations=200
    ray job submit --working-dir . -- python ray_jobs/make_data.py

Without RAY_ADDRESS / AWS_ENDPOINT_URL it starts the embedded stack (Ray + local S3) for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os

from medlm.config import dump_config, load_config
from medlm.data.factory import MakeDataConfig, format_summary, make_data


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML file (default: built-in defaults)")
    parser.add_argument("--summary-json", default=None, help="also write the summary to this local file")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    cfg = load_config(MakeDataConfig, args.config, args.overrides)
    print(dump_config(cfg))
    use_local = not (os.environ.get("RAY_ADDRESS") or os.environ.get("AWS_ENDPOINT_URL"))
    if use_local:
        from medlm.stack import local_stack

        ctx = local_stack(
            bucket=cfg.output[len("s3://") :].split("/", 1)[0] if cfg.output.startswith("s3://") else "medlm",
            s3=cfg.output.startswith("s3://"),
        )
    else:
        from medlm.stack import init_ray

        init_ray(env={k: v for k, v in os.environ.items() if k.startswith("AWS_")})
        ctx = contextlib.nullcontext()
    with ctx:
        summary = make_data(cfg)
    print(format_summary(summary))
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
