"""Render the Kubernetes (KubeRay) manifests of every environment from one set of sources.

Sources (edit these, never the output):
  infra/values/<env>.yaml   image, IAM role, node shapes and sizes of one environment
  infra/jobs.yaml           the jobs: one RayJob each, same entry points as `ray job submit`, each running
                            configs/<job>_<env>.yaml (the job sized for the environment)
  serve/config.yaml         the Serve config; the RayService's serveConfigV2 is made from it
  pyproject.toml            the Ray version (image tags and `rayVersion`)

Output, checked in: infra/k8s/<env>/{base,raycluster,rayservice}.yaml and jobs/<job>.yaml.

    python infra/render.py           # (re)write infra/k8s/
    python infra/render.py --check   # exit 1 and name the files when infra/k8s/ is stale
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medlm.config import ConfigError, Section, build_config, read_yaml  # noqa: E402

INFRA = ROOT / "infra"
OUT_DIR = INFRA / "k8s"
VALUES_DIR = INFRA / "values"
JOBS_FILE = INFRA / "jobs.yaml"
SERVE_CONFIG = ROOT / "serve" / "config.yaml"
PYPROJECT = ROOT / "pyproject.toml"
APP_DIR = "/home/ray/medlm"  # WORKDIR of infra/docker/Dockerfile*: the repository's files lie here
QUANTITY = r"^[0-9]+(Mi|Gi|Ti)$"


# --- inputs -------------------------------------------------------------------------------------


class Head(Section):
    instance_type: str
    cpu: int = Field(ge=1)
    memory: str = Field(pattern=QUANTITY)
    shm: str = Field(pattern=QUANTITY)


class WorkerGroup(Section):
    instance_type: str
    capacity_type: Literal["ON_DEMAND", "SPOT"] = "ON_DEMAND"
    cpu: int = Field(ge=1)
    memory: str = Field(pattern=QUANTITY)
    gpus: int = Field(default=0, ge=0)
    shm: str = Field(pattern=QUANTITY)
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(ge=1)
    tolerations: list[dict[str, str]] = []


class JobDefaults(Section):
    backoff_limit: int = Field(ge=0)
    ttl_seconds_after_finished: int = Field(ge=0)


class ServeValues(Section):
    """How the RayService differs from serve/config.yaml (nothing else does; see :func:`serve_config`)."""

    gpu_min_replicas: int = Field(ge=0)
    args: dict[str, Any] = {}  # merged into every application's args
    deployments: dict[str, dict[str, Any]] = {}  # deployment name -> options that replace its own


class Values(Section):
    environment: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    namespace: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    image_repository: str
    aws_region: str
    service_account: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    s3_role_arn: str = Field(pattern=r"^arn:aws:iam::[0-9]{12}:role/.+$")
    autoscaler_idle_timeout_s: int = Field(ge=0)
    head: Head
    cpu_workers: WorkerGroup
    gpu_workers: WorkerGroup
    jobs: JobDefaults
    serve: ServeValues


class JobSpec(Section):
    entrypoint: str  # `{env}` becomes the environment's name (configs/<job>_<env>.yaml)
    gpu: bool
    deadline_hours: float = Field(gt=0)

    def command(self, env: str) -> str:
        """The entry point of this job in environment ``env``; the config file it names must exist."""
        command = self.entrypoint.replace("{env}", env)
        argv = command.split()
        if "--config" in argv[:-1]:
            config = argv[argv.index("--config") + 1]
            if not (ROOT / config).is_file():
                raise ConfigError(f"infra/jobs.yaml: `{command}` names {config}, which does not exist")
        return command


class JobList(Section):
    jobs: dict[str, JobSpec]


def ray_version(pyproject: Path = PYPROJECT) -> str:
    """The exact Ray version that pyproject.toml pins (``ray[...]==X.Y.Z``)."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.fullmatch(r"ray(\[[^\]]*\])?==([0-9][0-9.]*)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise ConfigError(f"{pyproject}: no exact pin `ray[...]==X.Y.Z` among the dependencies")


def project_version(pyproject: Path = PYPROJECT) -> str:
    return tomllib.loads(pyproject.read_text())["project"]["version"]


def environments() -> list[str]:
    return sorted(p.stem for p in VALUES_DIR.glob("*.yaml"))


def load_values(env: str) -> Values:
    path = VALUES_DIR / f"{env}.yaml"
    return build_config(Values, read_yaml(path), source=str(path))


def load_jobs(path: Path = JOBS_FILE) -> dict[str, JobSpec]:
    return build_config(JobList, read_yaml(path), source=str(path)).jobs


def image(values: Values, variant: Literal["gpu", "cpu"]) -> str:
    """``<repo>:<medlm version>-ray<ray version>-<variant>``: the tag names the Ray version it holds."""
    return f"{values.image_repository}:{project_version()}-ray{ray_version()}-{variant}"


def serve_config(values: Values, path: Path = SERVE_CONFIG) -> dict[str, Any]:
    """serve/config.yaml as the cluster runs it.

    Three changes, nothing else: HTTP binds 0.0.0.0; the environment's ``serve.args`` are merged into
    every application's ``args`` (model locations); the options given in ``serve.deployments`` replace
    those keys of the deployment of that name (e.g. ``ray_actor_options`` with GPUs), as Serve itself
    replaces ``ray_actor_options`` / ``autoscaling_config`` as a whole.
    """
    if not path.exists():
        raise ConfigError(f"{path} is missing: the RayService's Serve config is generated from it")
    cfg = copy.deepcopy(read_yaml(path))
    cfg.setdefault("http_options", {})["host"] = "0.0.0.0"
    apps = cfg.get("applications")
    if not apps:
        raise ConfigError(f"{path}: no `applications`")
    found = set()
    for app in apps:
        app.setdefault("args", {}).update(copy.deepcopy(values.serve.args))
        for dep in app.get("deployments", []):
            if dep.get("name") in values.serve.deployments:
                dep.update(copy.deepcopy(values.serve.deployments[dep["name"]]))
                found.add(dep["name"])
    missing = set(values.serve.deployments) - found
    if missing:
        raise ConfigError(f"serve.deployments names {sorted(missing)}, which {path} does not deploy")
    from medlm.serving.config import AppArgs

    for app in apps:  # the merged args must still be valid arguments of the app
        build_config(AppArgs, app["args"], source=f"{path} + serve.args of {values.environment}")
    return cfg


# --- building blocks ----------------------------------------------------------------------------


def _labels(values: Values, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "medlm",
        "app.kubernetes.io/component": component,
        "medlm/environment": values.environment,
    }


def _meta(values: Values, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": values.namespace, "labels": _labels(values, component)}


def _pod(
    values: Values,
    name: str,
    img: str,
    cpu: int,
    memory: str,
    shm: str,
    instance_type: str,
    gpus: int = 0,
    capacity_type: str | None = None,
    tolerations: list | None = None,
    ports: list | None = None,
    env: list | None = None,
) -> dict[str, Any]:
    """A Ray pod template: requests = limits, /dev/shm in memory, IRSA service account, pinned nodes."""
    resources = {"cpu": str(cpu), "memory": memory}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    container = {
        "name": name,
        "image": img,
        "imagePullPolicy": "IfNotPresent",
        "workingDir": APP_DIR,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "env": [{"name": "AWS_REGION", "value": values.aws_region}, *(env or [])],
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if ports:
        container["ports"] = ports
    node_selector = {"node.kubernetes.io/instance-type": instance_type}
    if capacity_type:
        node_selector["eks.amazonaws.com/capacityType"] = capacity_type
    spec: dict[str, Any] = {
        "serviceAccountName": values.service_account,
        # Autoscaler v2: a pod is one Ray node for its whole life, never restarted in place.
        "restartPolicy": "Never",
        "nodeSelector": node_selector,
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}}],
    }
    if tolerations:
        spec["tolerations"] = copy.deepcopy(tolerations)
    return {"spec": spec}


HEAD_PORTS = [
    {"containerPort": 6379, "name": "gcs-server"},
    {"containerPort": 8265, "name": "dashboard"},
    {"containerPort": 10001, "name": "client"},
    {"containerPort": 8080, "name": "metrics"},
]
SERVE_PORT = {"containerPort": 8000, "name": "serve"}


def _worker_group(
    values: Values,
    group: WorkerGroup,
    name: str,
    variant: Literal["gpu", "cpu"],
    min_replicas: int,
    env: list | None,
    ports: list | None = None,
) -> dict[str, Any]:
    return {
        "groupName": name,
        "replicas": min_replicas,
        "minReplicas": min_replicas,
        "maxReplicas": max(group.max_replicas, min_replicas),
        "rayStartParams": {},  # KubeRay derives num-cpus / num-gpus / memory from the limits
        "template": _pod(
            values,
            "ray-worker",
            image(values, variant),
            group.cpu,
            group.memory,
            group.shm,
            group.instance_type,
            gpus=group.gpus,
            capacity_type=group.capacity_type,
            tolerations=group.tolerations,
            ports=ports,
            env=env,
        ),
    }


def cluster_spec(
    values: Values,
    gpu: bool = True,
    gpu_min_replicas: int | None = None,
    env: list | None = None,
    serve: bool = False,
) -> dict[str, Any]:
    """A RayCluster spec: a head that runs no work, autoscaled CPU and (optionally) GPU workers."""
    h = values.head
    head_ports = HEAD_PORTS + ([SERVE_PORT] if serve else [])
    workers = [
        _worker_group(
            values,
            values.cpu_workers,
            "cpu",
            "cpu",
            values.cpu_workers.min_replicas,
            env,
            [SERVE_PORT] if serve else None,
        )
    ]
    if gpu:
        g = values.gpu_workers
        workers.append(
            _worker_group(
                values,
                g,
                "gpu",
                "gpu",
                g.min_replicas if gpu_min_replicas is None else gpu_min_replicas,
                env,
                [SERVE_PORT] if serve else None,
            )
        )
    return {
        "rayVersion": ray_version(),
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "version": "v2",
            "upscalingMode": "Default",
            "idleTimeoutSeconds": values.autoscaler_idle_timeout_s,
            "resources": {
                "requests": {"cpu": "500m", "memory": "512Mi"},
                "limits": {"cpu": "500m", "memory": "512Mi"},
            },
        },
        "authOptions": {"mode": "token"},  # KubeRay creates the token Secret and hands it to every pod
        "headGroupSpec": {
            "rayStartParams": {"num-cpus": "0", "num-gpus": "0"},  # the head schedules, it never computes
            "template": _pod(
                values,
                "ray-head",
                image(values, "cpu"),
                h.cpu,
                h.memory,
                h.shm,
                h.instance_type,
                ports=head_ports,
                env=env,
            ),
        },
        "workerGroupSpecs": workers,
    }


# --- manifests ----------------------------------------------------------------------------------


def base(values: Values) -> list[dict[str, Any]]:
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": values.namespace, "labels": _labels(values, "namespace")},
    }
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            **_meta(values, values.service_account, "service-account"),
            "annotations": {"eks.amazonaws.com/role-arn": values.s3_role_arn},
        },
    }
    return [namespace, account]


def raycluster(values: Values) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": _meta(values, "medlm", "raycluster"),
        "spec": cluster_spec(values),
    }


def rayjob(values: Values, name: str, job: JobSpec) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _meta(values, f"medlm-{name}", "rayjob"),
        "spec": {
            "entrypoint": job.command(values.environment),
            # Use S3 through the pod's IAM role (never the embedded test server of the local stack).
            "runtimeEnvYAML": yaml.safe_dump({"env_vars": {"MEDLM_STACK": "external"}}, sort_keys=False),
            "submissionMode": "SidecarMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": values.jobs.ttl_seconds_after_finished,
            "backoffLimit": values.jobs.backoff_limit,
            "activeDeadlineSeconds": int(job.deadline_hours * 3600),
            "rayClusterSpec": cluster_spec(values, gpu=job.gpu),
        },
    }


def rayservice(values: Values, serve_path: Path = SERVE_CONFIG) -> dict[str, Any]:
    serve = serve_config(values, serve_path)
    # The API key reaches the ingress through the environment variable its args name, from a Secret.
    key_vars = sorted({app["args"].get("api_key_env", "MEDLM_API_KEY") for app in serve["applications"]})
    api_key = [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": "medlm-api-key", "key": "api-key"}}}
        for var in key_vars
    ]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": _meta(values, "medlm", "rayservice"),
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve, sort_keys=False),
            "excludeHeadPodFromServeSvc": True,
            "rayClusterConfig": cluster_spec(
                values, gpu_min_replicas=values.serve.gpu_min_replicas, env=api_key, serve=True
            ),
        },
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2, runtimeEnvYAML) as readable ``|`` blocks."""


_Dumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)
)


def _dump(docs: list[dict[str, Any]], sources: str) -> str:
    header = (
        f"# Generated by infra/render.py from {sources}.\n"
        "# Do not edit: change the sources and run `python infra/render.py`.\n"
    )
    return header + "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=120) for d in docs)


def render(env: str, serve_path: Path = SERVE_CONFIG) -> dict[str, str]:
    """Every manifest of ``env``: path relative to infra/k8s/<env>/ -> YAML text."""
    values = load_values(env)
    src = f"infra/values/{env}.yaml"
    files = {
        "base.yaml": _dump(base(values), src),
        "raycluster.yaml": _dump([raycluster(values)], f"{src} and pyproject.toml"),
        "rayservice.yaml": _dump([rayservice(values, serve_path)], f"{src} and serve/config.yaml"),
    }
    for name, job in load_jobs().items():
        files[f"jobs/{name}.yaml"] = _dump([rayjob(values, name, job)], f"{src} and infra/jobs.yaml")
    return files


def render_all(serve_path: Path = SERVE_CONFIG) -> dict[Path, str]:
    return {
        OUT_DIR / env / rel: text for env in environments() for rel, text in render(env, serve_path).items()
    }


def stale(rendered: dict[Path, str]) -> list[str]:
    """Files of infra/k8s/ that differ from ``rendered``, are missing, or are no longer rendered."""
    present = {p for p in OUT_DIR.rglob("*.yaml")} if OUT_DIR.exists() else set()
    out = [
        str(p.relative_to(ROOT)) for p, text in rendered.items() if not p.exists() or p.read_text() != text
    ]
    out += [str(p.relative_to(ROOT)) for p in present - set(rendered)]
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that infra/k8s/ is up to date")
    args = parser.parse_args(argv)
    try:
        rendered = render_all()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        bad = stale(rendered)
        for path in bad:
            print(f"stale: {path}", file=sys.stderr)
        if bad:
            print("run `python infra/render.py` and commit infra/k8s/", file=sys.stderr)
        return 1 if bad else 0
    for path in set(OUT_DIR.rglob("*.yaml")) - set(rendered) if OUT_DIR.exists() else ():
        path.unlink()
    for path, text in rendered.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(rendered)} manifests under {OUT_DIR.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
