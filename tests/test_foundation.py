"""The foundation: configs, storage, the local stack and the CLI."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medlm import storage
from medlm.config import ConfigError, Section, apply_overrides, build_config, dump_config, load_config

ROOT = Path(__file__).resolve().parent.parent


class Inner(Section):
    lr: float = 1e-3
    layers: list[int] = [1, 2]


class Outer(Section):
    name: str = "x"
    inner: Inner = Inner()
    flag: bool = False


def test_yaml_roundtrip_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner:\n  lr: 0.5\n")
    cfg = load_config(Outer, path, ["inner.lr=3e-4", "flag=true", "inner.layers=[4, 5]"])
    assert cfg.inner.lr == 3e-4 and cfg.flag is True and cfg.inner.layers == [4, 5] and cfg.name == "run"
    again = build_config(Outer, yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    assert yaml.safe_load(dump_config(again)) == yaml.safe_load(dump_config(cfg))


@pytest.mark.parametrize(
    "bad, needle",
    [
        (["inner.lrr=1"], "inner.lrr: unknown key"),
        (["nope=1"], "nope: unknown key"),
        (["inner.lr=fast"], "inner.lr"),
        (["name"], "not of the form"),
    ],
)
def test_bad_keys_and_values_are_rejected_clearly(bad, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(Outer, None, bad)


def test_override_into_scalar_is_an_error():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inner:\n  depth: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml") as e:
        load_config(Outer, path)
    assert "inner.depth: unknown key" in str(e.value)


def test_every_job_config_in_configs_loads():
    from medlm.jobs import JOBS

    for name, job in JOBS.items():
        if (ROOT / "configs" / job.config_file).exists():
            cfg = job.load()
            assert yaml.safe_load(dump_config(cfg)) == cfg.model_dump(mode="json"), name


def test_local_storage_roundtrip(tmp_path):
    uri = str(tmp_path / "a" / "b.txt")
    storage.write_text(uri, "hello")
    assert storage.read_text(uri) == "hello"
    assert storage.exists(uri) and not storage.exists(str(tmp_path / "missing"))
    storage.copy_tree(str(tmp_path / "a"), str(tmp_path / "copy"))
    assert storage.list_files(str(tmp_path / "copy")) == [str(tmp_path / "copy" / "b.txt")]


def test_s3_storage_roundtrip(s3, tmp_path):
    root = storage.join(s3.root, "foundation")
    storage.write_bytes(storage.join(root, "x/y.bin"), b"\x00\x01")
    assert storage.read_bytes(storage.join(root, "x/y.bin")) == b"\x00\x01"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("f")
    storage.copy_tree(str(tmp_path / "d"), storage.join(root, "tree"))
    assert storage.list_files(storage.join(root, "tree")) == [storage.join(root, "tree/f.txt")]
    local = storage.local_copy(storage.join(root, "tree"), cache_dir=tmp_path / "cache")
    assert Path(local, "f.txt").read_text() == "f"


def _medlm(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "medlm", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def test_cli_lists_the_jobs():
    out = _medlm("--help")
    assert out.returncode == 0, out.stderr
    for cmd in ("serve", "train", "data", "eval", "stack", "config"):
        assert cmd in out.stdout
    for recipe in ("recipes.demo", "recipes.reproduce"):  # the experiments: over the library, not in its CLI
        out = subprocess.run(
            [sys.executable, "-m", recipe, "--help"], cwd=ROOT, capture_output=True, text=True
        )
        assert out.returncode == 0 and "Usage" in out.stdout, out.stderr
    out = _medlm("train", "--help")
    for cmd in ("stage1", "stage2", "joint-sft", "multitask", "ct-clip"):
        assert cmd in out.stdout


def test_cli_config_show_rejects_bad_keys():
    out = _medlm("config", "show", "stage1", "optim.lrr=1")
    assert out.returncode == 2
    assert "optim.lrr: unknown key" in out.stderr
    out = _medlm("config", "show", "stage1", "optim.lr=0.25")
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["optim"]["lr"] == 0.25


@pytest.mark.slow
def test_stack_up_and_down_from_one_call(tmp_path):
    """`medlm stack up` starts Ray (with the job API) + S3; clients reach both; `down` stops both."""
    env = {"MEDLM_HOME": str(tmp_path), "RAY_ADDRESS": "", "AWS_ENDPOINT_URL": ""}
    port = str(__import__("medlm.stack", fromlist=["free_port"]).free_port())
    up = _medlm("stack", "up", "--s3-port", port, "--num-cpus", "1", env=env, timeout=180)
    try:
        assert up.returncode == 0, up.stderr
        exports = _medlm("stack", "env", env=env).stdout
        assert f"AWS_ENDPOINT_URL=http://127.0.0.1:{port}" in exports
        client_env = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import ray, boto3; ray.init(address='auto'); "
                "print(len([n for n in ray.nodes() if n['Alive']])); "
                "print([b['Name'] for b in boto3.client('s3').list_buckets()['Buckets']])",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, **client_env, "RAY_ADDRESS": "auto"},
            timeout=120,
        )
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.split("\n")[0] == "1" and "medlm" in probe.stdout
    finally:
        down = _medlm("stack", "down", env=env, timeout=120)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert _medlm("stack", "env", env=env).returncode == 1


DOCUMENTED = [
    "README.md",
    "docs/DESIGN.md",
    "infra/README.md",
    "medlm/cli.py",
    "medlm/config.py",
    "BENCHMARKS.md",
]
_OVERRIDE = re.compile(r"(?<![\w/.$-])((?:[a-z_0-9]+\.)+[a-z_0-9]+)=([^\s`'\"\]),]+)")


def documented_overrides() -> list[tuple[str, str]]:
    """Every ``section.key=value`` written in the docs and the CLI help, with the file it is in."""
    found = []
    for rel in DOCUMENTED:
        for m in _OVERRIDE.finditer((ROOT / rel).read_text()):
            if m.group(1).split(".")[0] in SECTIONS:
                found.append((rel, m.group(0)))
    return sorted(set(found))


SECTIONS = {
    "model",
    "optim",
    "data",
    "run",
    "val",
    "eval",
    "tts",
    "serve",
    "output",
    "ct",
    "kb",
    "factory",
    "consult",
    "mix",
    "speech",
    "text",
}


def test_every_documented_override_is_accepted_by_some_job():
    from medlm.config import ConfigError
    from medlm.jobs import JOBS

    found = documented_overrides()
    assert len(found) >= 10 and ("medlm/cli.py", "optim.lr=3e-4") in found
    bad = []
    for rel, item in found:
        ok = False
        for job in JOBS.values():
            try:
                job.load(None, [item])
                ok = True
                break
            except ConfigError:
                pass
        if not ok:
            bad.append(f"{rel}: {item}")
    assert bad == []
    with pytest.raises(ConfigError, match="train: unknown key"):  # the old, wrong example
        JOBS["stage1"].load(None, ["train.lr=3e-4"])


def import_graph() -> dict[str, set[str]]:
    """medlm module -> the medlm modules it imports, anywhere in the file (inside functions too), with the
    packages an import of ``a.b.c`` runs first (``a.b``)."""
    import ast

    mods = {}
    for p in (ROOT / "medlm").rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                parts = t.split(".")
                for k in range(2, len(parts) + 1):
                    u = ".".join(parts[:k])
                    if u in mods and u != m and not m.startswith(u + "."):
                        graph[m].add(u)
    return graph


def test_no_import_cycles_inside_functions_included():
    graph = import_graph()
    assert graph["medlm.ct.job"] >= {"medlm.ct.evaluate", "medlm.train.core"}  # the graph sees real imports
    cycles, done = [], set()
    for start in graph:  # a cycle through ``start``: a path from one of its imports back to it
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(path)
                elif nxt not in seen and nxt not in done:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        done.add(start)
    assert cycles == []


# The library's layers, bottom first (docs/DESIGN.md, "Layout"): a module may import its own package and the
# layers below it, never one above, inside functions too. The foundation's modules may import each other.
LAYERS = [
    {"medlm", "medlm.paths", "medlm.config", "medlm.audio", "medlm.storage"},  # foundation
    {"medlm.models"},
    {"medlm.data"},
    {"medlm.train"},
    {"medlm.eval"},
    {"medlm.ct"},
    {"medlm.serving"},
    {"medlm.stack"},
    {"medlm.jobs"},
    {"medlm.cli"},
    {"medlm.__main__"},
]


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the layer's package holding ``module``)."""
    for i, layer in enumerate(LAYERS):
        for pkg in sorted(layer, key=len, reverse=True):
            if module == pkg or (pkg != "medlm" and module.startswith(pkg + ".")):
                return i, pkg
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to DESIGN.md's layout")


def test_layers_import_downward_only():
    graph = import_graph()
    assert graph["medlm.serving.defaults"] >= {"medlm.ct.build"}  # the walk sees imports inside functions
    upward = []
    for module, targets in graph.items():
        i, pkg = layer_of(module)
        for target in targets:
            j, target_pkg = layer_of(target)
            if j > i or (j == i and target_pkg != pkg and i > 0):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_experiments_live_outside_the_library():
    """The demo and the reproductions are recipes over the library: nothing in medlm imports them."""
    assert (
        not (ROOT / "medlm" / "demo.py").exists() and not (ROOT / "medlm" / "eval" / "reproduce.py").exists()
    )
    for path in (ROOT / "medlm").rglob("*.py"):  # (import_graph() holds medlm modules only: read the imports)
        assert "recipes" not in {
            n.split(".")[0] for n in re.findall(r"^\s*(?:from|import) ([\w.]+)", path.read_text(), re.M)
        }, path


def test_paths_and_their_variables_are_read_in_one_module(monkeypatch, tmp_path):
    import tempfile

    from medlm import paths
    from medlm.models.pretrained import model_home

    for var in ("MEDLM_HOME", "MEDLM_MODELS", "MEDLM_CACHE"):
        monkeypatch.delenv(var, raising=False)
    home = Path.home() / ".cache" / "medlm"
    assert (paths.home(), paths.stack_dir(), paths.model_store()) == (home, home / "stack", home / "models")
    assert paths.download_cache() == Path(tempfile.gettempdir()) / "medlm-cache"
    monkeypatch.setenv("MEDLM_HOME", str(tmp_path / "h"))
    assert [paths.stack_dir(), paths.cluster_dir(), paths.tokenizer_dir(), paths.serve_defaults_dir()] == [
        tmp_path / "h" / d for d in ("stack", "cluster", "tokenizers", "serve-defaults")
    ]
    assert model_home() == home / "models"  # the model store does not move with MEDLM_HOME
    monkeypatch.setenv("MEDLM_MODELS", str(tmp_path / "m"))
    monkeypatch.setenv("MEDLM_CACHE", str(tmp_path / "c"))
    assert (model_home(), paths.download_cache()) == (tmp_path / "m", tmp_path / "c")
    assert import_graph()["medlm.paths"] == set()  # the bottom layer
    readers = [
        str(p.relative_to(ROOT))
        for p in [*(ROOT / "medlm").rglob("*.py"), ROOT / "cluster" / "local.py"]
        if p.name != "paths.py"
        and re.search(r"MEDLM_(HOME|MODELS|CACHE|STACK|FAULT_AT_STEP)[\"']", p.read_text())
    ]
    assert readers == []


def test_delete_files_clears_a_prefix(tmp_path):
    for name in ("part-0.parquet", "sub/part-1.parquet", "make_data-x.jsonl", "other.jsonl"):
        storage.write_text(str(tmp_path / "d" / name), "x")
    assert storage.delete_files(str(tmp_path / "d"), name_prefix="make_data-") == 1
    assert storage.delete_files(str(tmp_path / "d")) == 3
    assert storage.list_files(str(tmp_path / "d")) == []
    assert storage.delete_files(str(tmp_path / "missing")) == 0


def test_cluster_script_builds_on_the_stacks_public_pieces(monkeypatch, tmp_path):
    """cluster/local.py uses medlm.stack's public functions (no private helper, no copy of its start-up), and
    both keep their client exports."""
    import importlib.util
    import json

    from medlm import stack

    text = (ROOT / "cluster" / "local.py").read_text()
    assert not re.search(r"stack\._|moto\.server|AWS_ENDPOINT_URL|state\.json", text)
    spec = importlib.util.spec_from_file_location("medlm_cluster_local", ROOT / "cluster" / "local.py")
    local = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(local)
    monkeypatch.setenv("MEDLM_HOME", str(tmp_path))
    assert local.cluster_env() == {} == stack.stack_env()
    (tmp_path / "stack").mkdir()
    stack.write_state(
        {
            "moto_pid": 1,
            "ray_session": 2,
            "s3_endpoint": "http://127.0.0.1:5",
            "bucket": "medlm",
            "ray_address": "127.0.0.1:6379",
            "dashboard": "http://127.0.0.1:8265",
        }
    )
    one = {
        **stack.RAY_LOCAL_ENV,
        **stack.S3_LOCAL_ENV,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:5",
        "RAY_ADDRESS": "127.0.0.1:6379",
        "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:8265",
        "RAY_DASHBOARD_ADDRESS": "http://127.0.0.1:8265",
        "RAY_AUTH_MODE": "token",
    }
    assert stack.stack_env() == one == local.cluster_env()  # no multi-node state: the one-node stack's
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "state.json").write_text(
        json.dumps(
            {
                "address": "127.0.0.2:7",
                "dashboard": None,
                "s3_endpoint": None,
                "sessions": [],
                "temp_dir": "/x",
            }
        )
    )
    assert local.cluster_env() == {
        "RAY_ADDRESS": "127.0.0.2:7",
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
