"""The embedded local stack: a Ray head on 127.0.0.1 and an S3-compatible server (moto).

``local_stack()`` starts both in one call and stops both on exit; ``medlm stack up/down`` does
the same across commands (state under ``$MEDLM_HOME/stack``, see :mod:`medlm.paths`) so that ``ray job
submit`` and ``serve run`` can target it. When ``RAY_ADDRESS`` or ``AWS_ENDPOINT_URL``/real AWS credentials
are already configured, the existing services are used instead and nothing is started.

The pieces ``stack_up`` is made of (``start_moto``, ``start_in_session``, ``end_sessions``, ``use_s3``,
``read_state`` / ``write_state``, ``client_env``) are public: ``cluster/local.py`` builds its multi-node
cluster from them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from medlm import paths

log = logging.getLogger(__name__)

RAY_CLI = str(Path(sys.executable).parent / "ray")  # the `ray` command of this environment
DEFAULT_S3_PORT = 5555
DEFAULT_BUCKET = "medlm"

# Environment of every local Ray start: no usage-stats upload (the machine may have no internet) and the
# Linux cluster code path. (Binding to 127.0.0.1 is ray.init's / `ray start`'s node_ip_address, below.)
RAY_LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# Dummy credentials for the local moto server; real deployments use IAM roles instead.
S3_LOCAL_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    """Wait until something listens on 127.0.0.1:``port``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class S3Server:
    """moto's S3-compatible server on 127.0.0.1, in-process (threaded)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self._server = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return s3_env(self.endpoint_url)

    def start(self) -> S3Server:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment of an S3 client of the local (moto) server at ``endpoint``."""
    return {**S3_LOCAL_ENV, "AWS_ENDPOINT_URL": endpoint}


def use_s3(endpoint: str, bucket: str = DEFAULT_BUCKET) -> dict[str, str]:
    """Point this process at the local S3 server at ``endpoint`` and make sure ``bucket`` exists; returns the
    environment it set."""
    env = s3_env(endpoint)
    configure_env(env)
    from medlm import storage

    storage.makedirs(f"s3://{bucket}")
    return env


def configure_env(env: dict[str, str]) -> None:
    os.environ.update(env)


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    dashboard: bool = False,
    env: dict[str, str] | None = None,
):
    """Connect to ``address`` / ``RAY_ADDRESS``, or start a local Ray on 127.0.0.1.

    ``env`` is forwarded to every worker through the runtime environment (e.g. the S3 endpoint).
    """
    configure_env(RAY_LOCAL_ENV)
    import ray

    if ray.is_initialized():
        return ray
    runtime_env = {"env_vars": dict(env)} if env else None
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        address = "auto"  # a dashboard URL (what `ray job submit` uses): join the cluster running here
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # address="local": always a new instance, never whatever /tmp/ray/ray_current_cluster names
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            _node_ip_address="127.0.0.1",
            runtime_env=runtime_env,
            log_to_driver=True,
        )
    return ray


@dataclass
class Stack:
    s3_endpoint: str | None
    bucket: str
    ray_address: str | None

    @property
    def root(self) -> str:
        return f"s3://{self.bucket}"


@contextlib.contextmanager
def local_stack(bucket: str = DEFAULT_BUCKET, num_cpus: int | None = None, ray: bool = True, s3: bool = True):
    """Start (or reuse) the local S3 server and Ray; stop what was started on exit."""
    server = None
    started_ray = False
    try:
        if s3 and not os.environ.get("AWS_ENDPOINT_URL"):
            server = S3Server().start()
            configure_env(server.env())
        if s3:
            from medlm import storage

            storage.makedirs(f"s3://{bucket}")
        env = {k: os.environ[k] for k in (*S3_LOCAL_ENV, "AWS_ENDPOINT_URL") if k in os.environ}
        address = None
        if ray:
            import ray as _ray

            started_ray = not _ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
            init_ray(num_cpus=num_cpus, env=env)
            address = _ray.get_runtime_context().gcs_address
        yield Stack(os.environ.get("AWS_ENDPOINT_URL"), bucket, address)
    finally:
        if started_ray:
            import ray as _ray

            _ray.shutdown()
        if server is not None:
            server.stop()
            os.environ.pop("AWS_ENDPOINT_URL", None)


# --- persistent stack across commands (medlm stack up / down) -----------------------------------


def start_in_session(cmd: list[str], env: dict[str, str], log: Path) -> int:
    """Run one `ray start` in a new session; its daemons stay in that session. Returns the session id."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        rc = "timeout"
    if rc != 0:
        end_sessions({proc.pid})  # whatever it had started
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({rc}); see {log}")
    return proc.pid  # == the session id of everything it started


def session_pids(sids: set[int]) -> list[int]:
    import psutil  # installed with deepspeed, peft and accelerate

    pids = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) in sids and proc.status() != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return pids


def end_sessions(sids: set[int], grace_s: float = 5.0) -> None:
    """SIGTERM every process of the given sessions, SIGKILL what is still alive after ``grace_s``."""
    for pid in session_pids(sids):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace_s
    while time.time() < deadline and session_pids(sids):
        time.sleep(0.2)
    for pid in session_pids(sids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 5.0
    while time.time() < deadline and session_pids(sids):
        time.sleep(0.1)


def start_moto(port: int, log: Path) -> int:
    """``moto_server`` on 127.0.0.1:``port`` in a new session (it outlives this process), output appended to
    ``log``; waits until it listens. Returns its pid (== its session id, for :func:`end_sessions`)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_port(port)
    except BaseException:
        end_sessions({proc.pid})
        raise
    return proc.pid


def state_file(state_dir: Path | None = None) -> Path:
    """The state file of what was started (default: ``medlm stack up``'s, under
    :func:`medlm.paths.stack_dir`)."""
    return (state_dir or paths.stack_dir()) / "state.json"


def read_state(state_dir: Path | None = None) -> dict | None:
    """The state ``write_state`` recorded in ``state_dir``; None when nothing is up."""
    f = state_file(state_dir)
    return json.loads(f.read_text()) if f.exists() else None


def write_state(state: dict, state_dir: Path | None = None) -> None:
    state_file(state_dir).write_text(json.dumps(state, indent=2))


def client_env(
    ray_address: str,
    dashboard: str | None = None,
    s3_endpoint: str | None = None,
    ray_env: dict[str, str] = RAY_LOCAL_ENV,
) -> dict[str, str]:
    """Shell exports that point clients at a running Ray (and local S3): ``ray_env`` + one address per kind of
    client: RAY_ADDRESS (GCS) for ray.init, `serve run` and every medlm command; the dashboard's HTTP address
    for `ray job submit` (RAY_API_SERVER_ADDRESS, which it reads before RAY_ADDRESS) and for `serve
    deploy/status` (RAY_DASHBOARD_ADDRESS). Ray 2.60 clusters need ``RAY_AUTH_MODE=token``."""
    env = {**ray_env, "RAY_ADDRESS": ray_address, "RAY_AUTH_MODE": "token"}
    if dashboard:
        env.update({"RAY_API_SERVER_ADDRESS": dashboard, "RAY_DASHBOARD_ADDRESS": dashboard})
    if s3_endpoint:
        env.update(s3_env(s3_endpoint))
    return env


def stack_up(
    s3_port: int = DEFAULT_S3_PORT, num_cpus: int | None = None, bucket: str = DEFAULT_BUCKET
) -> dict:
    """Start ``ray start --head`` (with dashboard, for job submission) and ``moto_server``."""
    state_dir = paths.stack_dir()
    if state_file().exists():
        raise RuntimeError(f"a local stack is already up ({state_file()}); run `medlm stack down` first")
    state_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **RAY_LOCAL_ENV}
    moto_pid = start_moto(s3_port, state_dir / "moto.log")
    endpoint = f"http://127.0.0.1:{s3_port}"
    # The job agent's HTTP port is free-picked: the default (52365) is taken by any other Ray on this machine
    # (a test session, the demo), and an agent that cannot bind leaves `ray job submit` with "No available
    # agent to submit job".
    cmd = [
        RAY_CLI,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--disable-usage-stats",
        f"--dashboard-agent-listen-port={free_port()}",
    ]
    if num_cpus:
        cmd.append(f"--num-cpus={num_cpus}")
    ray_session = start_in_session(cmd, {**env, **s3_env(endpoint)}, state_dir / "ray-start.log")
    state = {
        "moto_pid": moto_pid,
        "ray_session": ray_session,
        "s3_endpoint": endpoint,
        "bucket": bucket,
        "ray_address": "127.0.0.1:6379",
        "dashboard": "http://127.0.0.1:8265",
    }
    write_state(state)
    use_s3(endpoint, bucket)
    return state


def stack_down() -> bool:
    """Stop what ``stack_up`` started; returns False when nothing was up."""
    state = read_state()
    if state is None:
        return False
    end_sessions({state["ray_session"], state["moto_pid"]})  # only what stack_up started, not other Ray
    state_file().unlink()
    return True


def stack_env() -> dict[str, str]:
    """Shell exports that point clients at the running local stack (``eval $(medlm stack env)``)."""
    state = read_state()
    if state is None:
        return {}
    return client_env(state["ray_address"], state["dashboard"], state["s3_endpoint"])
