"""Start and stop a local Ray cluster for development: one node, or several simulated on one machine.

    python cluster/local.py up                      # one node: the `medlm stack up` stack (S3 + Ray head)
    python cluster/local.py up --nodes 3 --cpus 1   # a head + 2 worker nodes, each its own raylet
    python cluster/local.py status
    python cluster/local.py down                    # stops exactly what `up` started
    eval "$(python cluster/local.py env)"           # point `ray job submit`, `serve`, boto3 at it

One node is the lead's ``medlm stack up`` (a Ray head on 127.0.0.1:6379 with the dashboard on 8265,
and a moto S3 server). Several nodes are several ``ray start`` on loopback addresses (127.0.0.2,
127.0.0.3, ...: one per simulated host) in their own temp dir and on their own ports (``--port`` and
the few after it; the rest are picked by the OS), so they do not disturb another Ray on the machine,
plus the same moto S3 server unless ``--no-s3``.
Every process a multi-node ``up`` starts is recorded by its session id, and ``down`` ends those
sessions and nothing else (not ``ray stop``, which ends every Ray on the machine); a one-node ``down``
is ``medlm stack down``. The multi-node cluster is built from ``medlm.stack``'s pieces (moto, sessions,
state file, client exports); its state is under ``$MEDLM_HOME/cluster`` (``medlm.paths.cluster_dir``).
Linux routes all of 127/8 to the loopback device; on macOS add the addresses
first (``sudo ifconfig lo0 alias 127.0.0.2 up``, and so on).

Ray 2.60 clusters require a token (``~/.ray/auth_token``): the CLI needs ``RAY_AUTH_MODE=token``,
which ``env`` exports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medlm import paths, stack  # noqa: E402

DEFAULT_PORT = 26379
RAY = stack.RAY_CLI


def node_ip(i: int) -> str:
    """Node ``i``'s address: 127.0.0.2, 127.0.0.3, ... (loopback, one per simulated host).

    Not 127.0.0.1: Ray replaces that with the machine's first interface unless
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, and with that setting ``ray start --address`` refuses
    to add a node. Other 127.x addresses are taken as they are (Linux routes all of 127/8 to lo).
    """
    return f"127.0.0.{2 + i}"


def _ray_env() -> dict[str, str]:
    """Environment of every `ray start`: token auth on, usage stats off.

    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the single-node stack's setting) must not be set here:
    with it, ``ray start --address`` refuses to add a node.
    """
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    env.pop("RAY_ADDRESS", None)
    return env


def _check_free(ports: list[int]) -> None:
    for p in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                raise RuntimeError(f"port {p} is in use; choose other ports (--port / --s3-port)") from None


def up_multi(
    nodes: int,
    cpus: int,
    port: int = DEFAULT_PORT,
    s3_port: int | None = stack.DEFAULT_S3_PORT,
    dashboard: bool = True,
    state_dir: Path | None = None,
    bucket: str = stack.DEFAULT_BUCKET,
) -> dict:
    """A head and ``nodes - 1`` worker nodes (``cpus`` CPUs each) on 127.0.0.2, 127.0.0.3, ...

    Fixed ports: the head's GCS on ``port``, dashboard (job submission) on ``port + 1``, client server
    on ``port + 2``; node ``i``'s dashboard agent on ``port + 3 + i``; S3 (moto) on ``s3_port``
    unless it is None. All other ports are picked by the OS. State: ``state_dir`` (default
    ``$MEDLM_HOME/cluster``).
    """
    state_dir = state_dir or paths.cluster_dir()
    if nodes < 2:
        raise ValueError("a multi-node cluster needs --nodes >= 2 (one node is `medlm stack up`)")
    if stack.state_file(state_dir).exists():
        raise RuntimeError(f"a local cluster is already up ({stack.state_file(state_dir)}); run `down` first")
    _check_free([*range(port, port + 3 + nodes), *([s3_port] if s3_port else [])])
    state_dir.mkdir(parents=True, exist_ok=True)
    # Short path: Ray's unix socket paths under it must stay below ~100 characters.
    temp_dir = tempfile.mkdtemp(prefix="medlm-ray-", dir="/tmp")
    state = {
        "nodes": nodes,
        "temp_dir": temp_dir,
        "sessions": [],
        "address": f"{node_ip(0)}:{port}",
        "dashboard": f"http://127.0.0.1:{port + 1}" if dashboard else None,
        "bucket": bucket,
        "s3_endpoint": None,
    }
    env = _ray_env()
    common = [
        f"--num-cpus={cpus}",
        "--num-gpus=0",
        "--disable-usage-stats",
        "--min-worker-port=0",
        "--max-worker-port=0",
    ]
    try:
        if s3_port:
            state["sessions"].append(stack.start_moto(s3_port, state_dir / "moto.log"))
            state["s3_endpoint"] = f"http://127.0.0.1:{s3_port}"
            env.update(stack.s3_env(state["s3_endpoint"]))
        head = [
            RAY,
            "start",
            "--head",
            f"--node-ip-address={node_ip(0)}",
            f"--port={port}",
            f"--temp-dir={temp_dir}",
            f"--include-dashboard={str(dashboard).lower()}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={port + 1}",
            f"--ray-client-server-port={port + 2}",
            f"--dashboard-agent-listen-port={port + 3}",
            *common,
        ]
        state["sessions"].append(stack.start_in_session(head, env, state_dir / "head.log"))
        for i in range(1, nodes):
            worker = [
                RAY,
                "start",
                f"--address={state['address']}",
                f"--node-ip-address={node_ip(i)}",
                "--include-log-monitor=false",
                f"--dashboard-agent-listen-port={port + 3 + i}",
                *common,
            ]
            state["sessions"].append(stack.start_in_session(worker, env, state_dir / f"worker-{i}.log"))
    except BaseException:
        stack.end_sessions(set(state["sessions"]))
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    stack.write_state(state, state_dir)
    if state["s3_endpoint"]:
        stack.use_s3(state["s3_endpoint"], bucket)
    return state


def down_multi(state_dir: Path | None = None) -> bool:
    state_dir = state_dir or paths.cluster_dir()
    state = stack.read_state(state_dir)
    if state is None:
        return False
    stack.end_sessions(set(state["sessions"]))
    shutil.rmtree(state["temp_dir"], ignore_errors=True)
    stack.state_file(state_dir).unlink()
    return True


def cluster_env(state_dir: Path | None = None) -> dict[str, str]:
    """Exports for clients of the running cluster (multi-node state first, else the one-node stack)."""
    state = stack.read_state(state_dir or paths.cluster_dir())
    if state is None:
        return stack.stack_env()
    # Not the one-node stack's RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER (see _ray_env).
    return stack.client_env(
        state["address"], state["dashboard"], state["s3_endpoint"], ray_env={"RAY_USAGE_STATS_ENABLED": "0"}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="local Ray cluster for development (one or several nodes)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the cluster")
    up.add_argument("--nodes", type=int, default=1, help="Ray nodes (1: `medlm stack up`)")
    up.add_argument(
        "--cpus", type=int, default=None, help="CPUs per node (default: all for one node, 1 for several)"
    )
    up.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="multi-node: GCS port of the head, dashboard on port+1 (one node: 6379 and 8265)",
    )
    up.add_argument("--s3-port", type=int, default=stack.DEFAULT_S3_PORT)
    up.add_argument("--no-s3", action="store_true", help="multi-node: no local S3 server")
    up.add_argument(
        "--no-dashboard", action="store_true", help="multi-node: no dashboard (and so no `ray job submit`)"
    )
    sub.add_parser("down", help="stop what `up` started")
    sub.add_parser("status", help="print the running cluster's state")
    sub.add_parser("env", help='print shell exports for clients (eval "$(... env)")')
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            if args.nodes == 1:
                state = stack.stack_up(s3_port=args.s3_port, num_cpus=args.cpus)
            else:
                state = up_multi(
                    args.nodes,
                    args.cpus or 1,
                    args.port,
                    None if args.no_s3 else args.s3_port,
                    dashboard=not args.no_dashboard,
                )
            print(json.dumps(state, indent=2))
        elif args.command == "down":
            print("stopped" if down_multi() or stack.stack_down() else "nothing was up")
        elif args.command == "status":
            for f in (stack.state_file(paths.cluster_dir()), stack.state_file()):
                if f.exists():
                    print(f"{f}:\n{f.read_text()}")
                    return 0
            print("nothing is up")
            return 1
        elif args.command == "env":
            for k, v in cluster_env().items():
                print(f"export {k}={v}")
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
