"""Infra: images, KubeRay manifests (schema-validated), the AWS launcher config, the local cluster script."""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "infra" / "k8s"
DOCKERFILES = [ROOT / "infra" / "docker" / "Dockerfile", ROOT / "infra" / "docker" / "Dockerfile.cpu"]
AWS_LAUNCHER = ROOT / "cluster" / "aws.yaml"
CRD_DIR = ROOT.parent / "shared" / "schemas" / "kuberay"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
K8S_VERSION = "1.33"  # core Kubernetes schemas to validate against (kubernetes-validate)
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def render():
    spec = importlib.util.spec_from_file_location("medlm_infra_render", ROOT / "infra" / "render.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


def manifest_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.load_all(path.read_text(), Loader=LOADER) if d]


def all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in manifest_files() for d in docs(p)]


def cluster_specs() -> list[tuple[str, dict]]:
    """Every RayCluster spec: standalone, inside each RayJob, inside the RayService."""
    out = []
    for path, d in all_docs():
        spec = {
            "RayCluster": lambda s: s,
            "RayJob": lambda s: s["rayClusterSpec"],
            "RayService": lambda s: s["rayClusterConfig"],
        }.get(d["kind"])
        if spec:
            out.append((f"{path.relative_to(ROOT)}:{d['kind']}", spec(d["spec"])))
    return out


def pod_templates(spec: dict) -> list[tuple[str, dict]]:
    return [("head", spec["headGroupSpec"]["template"])] + [
        (g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]
    ]


def pyproject_ray_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', text)
    assert m, "pyproject.toml must pin ray exactly (ray[...]==X.Y.Z)"
    return m.group(1)


# --- rendering ----------------------------------------------------------------------------------


def test_manifests_are_rendered_and_up_to_date():
    rendered = render().render_all()  # fails with a clear error when serve/config.yaml is missing
    assert rendered, "nothing rendered"
    assert render().stale(rendered) == [], "infra/k8s/ is stale: run `python infra/render.py`"
    envs = {p.relative_to(K8S).parts[0] for p in manifest_files()}
    assert envs == {"dev", "prod"}


def test_render_rejects_bad_values_and_missing_serve_config(tmp_path):
    r = render()
    values = yaml.safe_load((ROOT / "infra" / "values" / "dev.yaml").read_text())
    values["gpu_worker"] = values.pop("gpu_workers")  # a typo
    with pytest.raises(r.ConfigError, match="gpu_worker"):
        r.build_config(r.Values, values)
    with pytest.raises(r.ConfigError, match="missing"):
        r.serve_config(r.load_values("dev"), tmp_path / "config.yaml")
    dev = r.load_values("dev")
    dev.serve.deployments = {"NoSuchDeployment": {"num_replicas": 2}}
    with pytest.raises(r.ConfigError, match="NoSuchDeployment"):
        r.serve_config(dev)
    dev = r.load_values("dev")
    dev.serve.args = {"model_dirr": "s3://x"}  # a typo in the app's arguments
    with pytest.raises(r.ConfigError, match="model_dirr"):
        r.serve_config(dev)


# --- schema validation --------------------------------------------------------------------------


def strict(schema: dict) -> dict:
    """An OpenAPI schema that rejects unknown fields, as `kubectl apply` (field validation Strict) does.

    Structural CRD schemas prune unknown fields instead of listing them as errors, so without this a
    misspelled field (``minReplica``) would pass silently.
    """
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [strict(s) for s in schema[key]]
    return schema


@functools.cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {CRD_DIR} (the shared/ folder beside the repo)")
    crd = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=LOADER)
    assert crd["spec"]["names"]["kind"] == kind
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft202012Validator(schema)


def crd_errors(doc: dict) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in crd_validator(doc["kind"]).iter_errors(doc)
    ]


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_validates(path):
    """KubeRay CRs against the CRD schemas; core objects against Kubernetes' own schemas."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")
    found = docs(path)
    assert found, f"{path} holds no manifest"
    for d in found:
        assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), d
        # What the API server requires of names (no schema states it): DNS-1123 labels.
        name = d["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name), name
        if d["apiVersion"] == "ray.io/v1":
            assert crd_errors(d) == []
        else:
            kv.validate(d, K8S_VERSION, strict=True)


@pytest.mark.parametrize("where,spec", cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_pod_templates_validate_against_core_schema(where, spec):
    """The pod templates inside the CRs, also against the core PodTemplate schema (strict)."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")
    for group, template in pod_templates(spec):
        kv.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group}, "template": template},
            K8S_VERSION,
            strict=True,
        )


def test_schema_validation_catches_mistakes():
    cluster = next(d for _, d in all_docs() if d["kind"] == "RayCluster")
    assert crd_errors(cluster) == []
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["minReplica"] = typo["spec"]["workerGroupSpecs"][0].pop("minReplicas")
    assert any("minReplica" in e for e in crd_errors(typo))
    wrong_type = copy.deepcopy(cluster)
    wrong_type["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    assert crd_errors(wrong_type)
    bad_enum = copy.deepcopy(cluster)
    bad_enum["spec"]["authOptions"]["mode"] = "password"
    assert crd_errors(bad_enum)
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")
    template = copy.deepcopy(cluster["spec"]["workerGroupSpecs"][-1]["template"])
    template["spec"]["tolerationz"] = template["spec"].pop("tolerations")
    with pytest.raises(kv.ValidationError, match="tolerationz"):
        kv.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": template},
            K8S_VERSION,
            strict=True,
        )


# --- what the manifests must say ----------------------------------------------------------------


def test_ray_versions_agree_across_pyproject_images_and_manifests():
    import ray

    want = pyproject_ray_version()
    assert ray.__version__ == want, "the installed Ray differs from pyproject's pin"
    for dockerfile, variant in zip(DOCKERFILES, ("-gpu", "")):
        bases = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M)
        assert bases == [f"rayproject/ray:{want}-py311{variant}"], (dockerfile.name, bases, want)
    images = []
    for where, spec in cluster_specs():
        assert spec["rayVersion"] == want, where
        images += [c["image"] for _, t in pod_templates(spec) for c in t["spec"]["containers"]]
    launcher = yaml.safe_load(AWS_LAUNCHER.read_text())
    images += [launcher["docker"]["head_image"], launcher["docker"]["worker_image"]]
    images += [
        t["docker"]["worker_image"] for t in launcher["available_node_types"].values() if "docker" in t
    ]
    for img in images:
        assert re.search(rf"-ray{re.escape(want)}-(gpu|cpu)$", img), f"image {img} does not name Ray {want}"


def test_dockerfiles_ship_what_the_jobs_run():
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert re.search(rf"^WORKDIR\s+{re.escape(render().APP_DIR)}$", text, re.M)
        # The build context is the repository: its allow-list must let through everything COPY names.
        allowed = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
        for line in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", text, re.M):
            for src in line.split():
                assert f"!{src}" in allowed, f"{dockerfile.name}.dockerignore keeps out {src}"
        for needed in ("medlm", "ray_jobs", "configs", "serve", "pyproject.toml", "requirements"):
            assert re.search(rf"^COPY\b.*\s{needed}\b", text, re.M), f"{dockerfile.name}: no COPY of {needed}"
        # the lock, exactly: every package hash-checked (torch comes from its CUDA / CPU index first)
        assert "--require-hashes --no-deps -r" in text and "requirements/lock.txt" in text
        assert "requirements/torch-cpu.txt" in text
        assert "espeak-ng" in text  # the data factory's TTS
        assert re.search(rf"^ENV PYTHONPATH={re.escape(render().APP_DIR)}\b", text, re.M)  # serve.* imports
    assert "cu" in re.search(r"TORCH_INDEX_URL=(\S+)", DOCKERFILES[0].read_text()).group(1)
    assert re.search(r"TORCH_INDEX_URL=\S+/cpu\b", DOCKERFILES[1].read_text())


def test_ray_clusters_follow_production_practice():
    accounts = {d["metadata"]["name"]: d for _, d in all_docs() if d["kind"] == "ServiceAccount"}
    for where, spec in cluster_specs():
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", where
        assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["version"] == "v2", where
        assert spec["authOptions"] == {"mode": "token"}, where
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert "cpu" in groups, where
        for g in groups.values():
            assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] and g["maxReplicas"] >= 1, where
        for group, template in pod_templates(spec):
            pod = template["spec"]
            account = accounts[pod["serviceAccountName"]]
            role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
            assert role.startswith("arn:aws:iam::"), (where, group)
            assert pod["nodeSelector"], (where, group)
            shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
            assert shm, (where, group, "no in-memory emptyDir")
            ray = pod["containers"][0]
            assert {"name": shm[0]["name"], "mountPath": "/dev/shm"} in ray["volumeMounts"], (where, group)
            assert ray["resources"]["requests"] == ray["resources"]["limits"], (where, group)
            assert ray["workingDir"] == render().APP_DIR
            gpus = int(ray["resources"]["limits"].get("nvidia.com/gpu", 0))
            if group == "gpu":
                assert gpus >= 1, where
                assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), where
                assert ray["image"].endswith("-gpu")
            else:
                assert gpus == 0 and ray["image"].endswith("-cpu"), (where, group)


def test_rayjobs_run_the_registered_jobs_with_existing_entry_points():
    from medlm.jobs import JOBS

    for env in ("dev", "prod"):
        jobs = {d["metadata"]["name"]: d for p in (K8S / env / "jobs").glob("*.yaml") for d in docs(p)}
        commands = set()
        for name, job in jobs.items():
            spec = job["spec"]
            argv = shlex.split(spec["entrypoint"])
            assert argv[0] == "python" and argv[2] == "--config" and len(argv) == 4, spec["entrypoint"]
            assert (ROOT / argv[1]).is_file(), f"{name}: entry point {argv[1]} does not exist"
            config = ROOT / argv[3]
            assert config.is_file(), f"{name}: config {argv[3]} does not exist"
            parsed = yaml.safe_load(config.read_text())
            assert isinstance(parsed, dict), f"{name}: {argv[3]} is not a YAML mapping"
            assert spec["submissionMode"] == "SidecarMode"
            assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
            assert spec["backoffLimit"] >= 0 and spec["activeDeadlineSeconds"] > 0
            assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
            commands.add(spec["entrypoint"])
        # One RayJob per registered job, with the job's own entry point and its config for this environment
        # (configs/<job>_<env>.yaml: the default config's recipe at the environment's scale).
        want = {
            f"python ray_jobs/{j.name}.py --config configs/{Path(j.config_file).stem}_{env}.yaml"
            for j in JOBS.values()
        }
        assert commands == want


def _gpu_group(cluster: dict) -> dict | None:
    """The worker group of a RayCluster spec whose pods request GPUs (None when it has none)."""
    groups = [
        g
        for g in cluster["workerGroupSpecs"]
        if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) > 0
    ]
    assert len(groups) <= 1, [g["groupName"] for g in groups]
    return groups[0] if groups else None


class _Launched(Exception):
    """Raised by the fake TorchTrainer: the job built its Ray Train trainer; nothing runs."""


def _scaling_config(job_cfg, tmp_path, monkeypatch):
    """The ``ScalingConfig`` that the job's own driver code hands to Ray Train for ``job_cfg`` (training jobs
    and ct_clip), captured by a fake ``TorchTrainer``; no Ray cluster, S3 or data is touched (storage and data
    locations point at ``tmp_path``, datasets are stubbed, no starting export is read)."""
    import ray.data
    import ray.train.torch

    from medlm.ct.job import CTClipConfig
    from medlm.train.config import TrainJobConfig

    seen = {}

    class FakeTrainer:
        def __init__(self, *args, scaling_config, **kwargs):
            seen["scaling"] = scaling_config

        def fit(self):
            raise _Launched

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", FakeTrainer)
    stub = type("Dataset", (), {"context": ray.data.DataContext()})()
    if isinstance(job_cfg, TrainJobConfig):
        import medlm.data.pipeline
        from medlm.train.core import train

        monkeypatch.setattr(medlm.data.pipeline, "build_dataset", lambda data, model: stub)
        cfg = job_cfg.model_copy(
            update={
                "run": job_cfg.run.model_copy(update={"storage_path": str(tmp_path)}),
                "model": job_cfg.model.model_copy(update={"init_from": None}),
            }
        )
        with pytest.raises(_Launched):
            train(cfg)
    elif isinstance(job_cfg, CTClipConfig):
        import medlm.ct.job

        monkeypatch.setattr(medlm.ct.job, "train_dataset", lambda cfg, uri: stub)
        cfg = job_cfg.model_copy(
            update={
                "output": str(tmp_path),
                "data": job_cfg.data.model_copy(update={"uri": str(tmp_path / "ct")}),
            }
        )
        with pytest.raises(_Launched):
            medlm.ct.job.run_ct_clip(cfg)
    else:
        pytest.fail(f"{type(job_cfg).__name__} runs no Ray Train trainer")
    return seen["scaling"]


def _gpu_ask(job_cfg, tmp_path, monkeypatch) -> tuple[int, float, float]:
    """(workers, GPUs per worker, CPUs per worker) that a job's config asks of the cluster, read from what the
    job's own code hands to Ray: the Ray Train ScalingConfig (training jobs, ct_clip), the evaluation's Ray
    Data actor pool (``actor_gpus``), make_data's 1-CPU tasks."""
    from medlm.data.factory import MakeDataConfig
    from medlm.eval.job import EvalConfig, _actors
    from medlm.train.triage import TriageJobConfig

    if isinstance(job_cfg, EvalConfig):
        actors = _actors(job_cfg)
        return job_cfg.num_actors, float(actors["num_gpus"] or 0), float(actors["num_cpus"])
    if isinstance(job_cfg, MakeDataConfig):
        return 1, 0.0, 1.0  # one Ray task (num_cpus=1) per shard; nothing of it asks for a GPU
    if isinstance(job_cfg, TriageJobConfig):
        return 1, 0.0, job_cfg.num_cpus  # one Ray task trains the screen's small heads
    scaling = _scaling_config(job_cfg, tmp_path, monkeypatch)
    per_worker = scaling._resources_per_worker_not_none
    assert bool(per_worker.get("GPU")) == scaling.use_gpu
    return scaling.num_workers, float(per_worker.get("GPU", 0)), float(per_worker.get("CPU", 0))


def test_gpu_jobs_ask_for_gpus_that_their_cluster_has(tmp_path, monkeypatch):
    """Every RayJob as rendered now: a `gpu: true` job's config (loaded through medlm's job registry) asks for
    GPUs in Ray (Ray Train's ScalingConfig has use_gpu; the evaluation's model actors have actor_gpus) and its
    cluster has a GPU worker group requesting nvidia.com/gpu, big enough for the workers; a `gpu: false` job
    asks for no GPU and its cluster has no GPU group."""
    from medlm.jobs import JOBS

    r = render()
    specs = r.load_jobs()
    rendered = r.render_all()
    seen = set()
    for path, text in rendered.items():
        if path.parent.name != "jobs":
            continue
        env = path.parent.parent.name
        (job,) = [d for d in yaml.load_all(text, Loader=LOADER) if d]
        name = job["metadata"]["name"].removeprefix("medlm-")
        argv = shlex.split(job["spec"]["entrypoint"])
        registered = JOBS[Path(argv[1]).stem]
        cfg = registered.load(str(ROOT / argv[3]))  # the config the entry point names, as the job loads it
        workers, gpus, cpus = _gpu_ask(cfg, tmp_path / env / name, monkeypatch)
        group = _gpu_group(job["spec"]["rayClusterSpec"])
        where = f"{env}/{name} ({argv[3]})"
        if specs[name].gpu:
            assert gpus > 0, f"{where}: marked gpu: true, but its config asks Ray for no GPU"
            assert group is not None, f"{where}: no GPU worker group in the RayJob's cluster"
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            node_gpus, node_cpus = int(limits["nvidia.com/gpu"]), int(limits["cpu"])
            per_node = min(workers, int(node_gpus // gpus))
            assert per_node >= 1, f"{where}: one worker asks for {gpus} GPUs, a GPU node has {node_gpus}"
            assert workers <= per_node * group["maxReplicas"], (
                f"{where}: {workers} GPU workers never fit the group"
            )
            assert per_node * cpus <= node_cpus, (
                f"{where}: {per_node} workers x {cpus} CPUs > a node's {node_cpus}"
            )
        else:
            assert gpus == 0, f"{where}: marked gpu: false, but its config asks for GPUs"
            assert group is None, f"{where}: gpu: false, yet the cluster has a GPU worker group"
        seen.add((env, name))
    assert seen == {(env, name) for env in r.environments() for name in specs}
    # the laptop defaults stay on CPU (the tiny preset): the cluster configs are separate files
    for job in ("stage1", "ct_clip", "evaluate"):
        assert _gpu_ask(JOBS[job].load(), tmp_path / "default" / job, monkeypatch)[1] == 0, job


def test_rayservice_serve_config_is_generated_from_serve_config_yaml():
    source = ROOT / "serve" / "config.yaml"
    assert source.is_file(), "serve/config.yaml is missing: the RayService's Serve config comes from it"
    for env in ("dev", "prod"):
        (service,) = docs(K8S / env / "rayservice.yaml")
        values = yaml.safe_load((ROOT / "infra" / "values" / f"{env}.yaml").read_text())
        want = yaml.safe_load(source.read_text())
        want.setdefault("http_options", {})["host"] = "0.0.0.0"
        for app in want["applications"]:
            app.setdefault("args", {}).update(values["serve"].get("args", {}))
            for dep in app.get("deployments", []):
                dep.update(values["serve"].get("deployments", {}).get(dep["name"], {}))
        assert yaml.safe_load(service["spec"]["serveConfigV2"]) == want
        assert service["spec"]["excludeHeadPodFromServeSvc"] is True
        # The ingress reads its API key from the variable its args name, filled from a Secret.
        for app in want["applications"]:
            var = app["args"].get("api_key_env", "MEDLM_API_KEY")
            for _, template in pod_templates(service["spec"]["rayClusterConfig"]):
                env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
                assert "secretKeyRef" in env[var]["valueFrom"], var
        for app in want["applications"]:
            path = app["import_path"]
            module = path.split(":")[0] if ":" in path else path.rsplit(".", 1)[0]
            assert _module_exists(module), f"{env}: import_path {path}: no module {module}"


def _module_exists(module: str) -> bool:
    if (ROOT / (module.replace(".", "/") + ".py")).is_file():
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def test_no_static_credentials_anywhere():
    """S3 access is IRSA (service account) or an instance profile: no AWS keys in any file."""
    values = sorted((ROOT / "infra" / "values").glob("*.yaml"))
    files = [*manifest_files(), *DOCKERFILES, AWS_LAUNCHER, *values]
    for f in files:
        text = f.read_text()
        for pattern in (
            r"AWS_ACCESS_KEY_ID",
            r"AWS_SECRET_ACCESS_KEY",
            r"AWS_SESSION_TOKEN",
            r"\bAKIA[0-9A-Z]{16}\b",
            r"aws_secret_access_key",
        ):
            assert not re.search(pattern, text), f"{f.relative_to(ROOT)} holds {pattern}"
    for where, spec in cluster_specs():
        for _, template in pod_templates(spec):
            for var in template["spec"]["containers"][0].get("env", []):
                assert "value" in var or "secretKeyRef" in var.get("valueFrom", {}), (where, var)
                if re.search(r"KEY|TOKEN|SECRET|PASSWORD", var["name"]):
                    assert "valueFrom" in var, f"{where}: {var['name']} must come from a Secret"


# --- packaging: the configs inside the wheel -----------------------------------------------------


def test_pyproject_packages_medlm_and_ships_the_configs():
    """pyproject lists the packages (setuptools cannot both discover them and map configs/ into one): every
    package of medlm/ must be there, and configs/ (and each folder in it) as medlm.configs[.<folder>] with its
    YAMLs as package data."""
    import tomllib

    st = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    code = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "medlm").rglob("__init__.py")}
    folders = [p for p in (ROOT / "configs").rglob("*") if p.is_dir() and p.name != "__pycache__"]
    data = {"medlm.configs", *(".".join(("medlm", *p.relative_to(ROOT).parts)) for p in folders)}
    assert set(st["packages"]) == code | data, (
        "pyproject.toml [tool.setuptools] packages: list medlm's packages "
        "and each folder of configs/ as medlm.configs.<folder>"
    )
    assert st["package-dir"] == {"medlm.configs": "configs"}
    assert (ROOT / "configs" / "__init__.py").is_file()  # a regular package: editable installs map it too
    for pkg in data:
        assert st["package-data"].get(pkg) == ["*.yaml"], f"pyproject.toml: package-data {pkg} = ['*.yaml']"
    others = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "configs").rglob("*")
        if p.is_file() and p.suffix != ".yaml" and p.name != "__init__.py" and "__pycache__" not in p.parts
    ]
    assert others == [], f"{others}: only *.yaml files travel as package data"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_installed_wheel_finds_its_configs_outside_the_repository(tmp_path):
    """A non-editable install: `pip wheel --no-deps --no-build-isolation .`, the wheel installed into a fresh
    venv that sees the locked packages, then `medlm config show stage1` from a directory
    outside the repository."""
    import shutil
    import sysconfig
    import zipfile

    def run(*argv, **kw):
        out = subprocess.run(
            [str(a) for a in argv], capture_output=True, text=True, timeout=300, check=False, **kw
        )
        assert out.returncode == 0, f"{argv}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out.stdout

    src = tmp_path / "src"  # a copy: a build in the checkout would leave build/, which later builds reuse
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("medlm", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        src,
        "-w",
        tmp_path / "wheels",
    )
    (wheel,) = (tmp_path / "wheels").glob("medlm-*.whl")
    want = {f"medlm/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / "configs").rglob("*.yaml")}
    missing = want - set(zipfile.ZipFile(wheel).namelist())
    assert len(want) > 10 and not missing, sorted(missing)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    py = venv / "bin" / "python"
    purelib = Path(run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    # This interpreter's locked packages (pip included) on the new venv's path, as a plain path line: it gets
    # no .pth processing, so the checkout's editable medlm stays invisible there.
    # (`venv --system-site-packages` would expose the base interpreter's packages, not the locked venv's.)
    (purelib / "_medlm_locked_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(py, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    where = run(
        py,
        "-c",
        "import medlm, medlm.config as c; print(medlm.__file__); print(c.CONFIG_DIR)",
        cwd=elsewhere,
        env=env,
    ).split()
    assert Path(where[0]).parent == purelib / "medlm" and Path(where[1]) == purelib / "medlm" / "configs", (
        where
    )
    shown = yaml.safe_load(run(venv / "bin" / "medlm", "config", "show", "stage1", cwd=elsewhere, env=env))
    assert (
        shown["job"] == "stage1" and shown["model"]["preset"] == "tiny" and shown["run"]["use_gpu"] is False
    )
    # a path as the repository writes it (configs/<file>) also resolves to the shipped file
    shown = yaml.safe_load(
        run(
            venv / "bin" / "medlm",
            "config",
            "show",
            "stage1",
            "-c",
            "configs/stage1_prod.yaml",
            cwd=elsewhere,
            env=env,
        )
    )
    assert shown["run"]["use_gpu"] is True and shown["model"]["preset"] == "base"


# --- AWS cluster launcher -----------------------------------------------------------------------


def test_aws_launcher_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(AWS_LAUNCHER.read_text())
    config = prepare_config(copy.deepcopy(raw))  # what `ray up` does before validating
    validate_config(config)  # ray/autoscaler/ray-schema.json
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    assert any(t["node_config"]["InstanceType"].startswith(("p", "g")) for t in types.values())
    markets = [t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") for t in types.values()]
    assert "spot" in markets
    for name, t in types.items():
        assert t["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    broken = copy.deepcopy(raw)
    gpu = broken["available_node_types"]["gpu"]
    gpu["node_confg"] = gpu.pop("node_config")  # a typo
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


# --- local multi-node cluster -------------------------------------------------------------------


def _free_port_block(n: int = 12) -> int:
    """A base port with ``n`` free ports after it, away from Ray's defaults and the ephemeral range."""
    import random

    for _ in range(50):
        base = random.randrange(21000, 29000)
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    pytest.skip("no block of free ports found")


def test_local_cluster_rejects_bad_input(tmp_path):
    spec = importlib.util.spec_from_file_location("medlm_cluster_local", ROOT / "cluster" / "local.py")
    local = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(local)
    with pytest.raises(ValueError, match="--nodes >= 2"):
        local.up_multi(1, 1, state_dir=tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} is in use"):
            local.up_multi(2, 1, port=port, s3_port=None, state_dir=tmp_path)
    assert not (tmp_path / "state.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_local_multi_node_cluster_trains_across_nodes_and_stops_cleanly(tmp_path):
    """Two simulated nodes (127.0.0.2, 127.0.0.3) + moto S3; `ray job submit` runs make_data, then
    stage 1 with its 2 workers forced onto different nodes (STRICT_SPREAD); `down` stops everything."""
    port = _free_port_block()
    env = {**os.environ, "MEDLM_HOME": str(tmp_path)}  # its own state dir: never touches `medlm stack`
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # job drivers' python
    for k in ("RAY_ADDRESS", "AWS_ENDPOINT_URL"):
        env.pop(k, None)
    script = [sys.executable, str(ROOT / "cluster" / "local.py")]
    up = subprocess.run(
        [*script, "up", "--nodes", "2", "--cpus", "1", f"--port={port}", f"--s3-port={port + 10}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    state_file = tmp_path / "cluster" / "state.json"
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads(state_file.read_text())
        client = {
            **env,
            "RAY_AUTH_MODE": "token",
            "RAY_ADDRESS": state["dashboard"],
            "AWS_ENDPOINT_URL": state["s3_endpoint"],
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        probe = (
            f"import json, ray; ray.init(address={state['address']!r}, log_to_driver=False); "
            "print(json.dumps([n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']]))"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe], env=client, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        alive = json.loads(out.stdout.strip().splitlines()[-1])
        assert sorted(alive) == ["127.0.0.2", "127.0.0.3"]

        root = "s3://medlm/multinode"
        submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--working-dir", str(ROOT), "--"]
        data = subprocess.run(
            [*submit, "python", "ray_jobs/make_data.py", f"output={root}/data"],
            env=client,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert data.returncode == 0 and "succeeded" in data.stdout, data.stdout[-3000:] + data.stderr[-3000:]
        train = subprocess.run(
            [
                *submit,
                "python",
                "ray_jobs/stage1.py",
                "--config",
                "configs/stage1.yaml",
                f"data.root={root}/data",
                f"run.storage_path={root}/runs",
                "run.name=across-nodes",
                "run.placement_strategy=STRICT_SPREAD",
                "optim.steps=2",
                "optim.checkpoint_every=2",
                "optim.log_every=1",
            ],
            env=client,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert train.returncode == 0 and "succeeded" in train.stdout, (
            train.stdout[-3000:] + train.stderr[-3000:]
        )
        summary = json.loads(re.search(r"^\{\n.*?^\}$", train.stdout, re.S | re.M).group(0))
        assert summary["workers"] == 2 and summary["nodes"] == 2, summary
        assert len(summary["history"]) == 2 and summary["export"] == f"{root}/runs/across-nodes/export"
    finally:
        down = subprocess.run([*script, "down"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    assert not state_file.exists()
    assert not Path(state["temp_dir"]).exists()
    import psutil

    leftovers = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) in state["sessions"] and proc.status() != psutil.STATUS_ZOMBIE:
                leftovers.append((proc.pid, proc.name()))
        except (OSError, psutil.Error):
            continue
    assert leftovers == [], f"processes of the cluster still alive: {leftovers}"
