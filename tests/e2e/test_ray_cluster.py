"""End to end on an existing Ray cluster: `ray start --head` and a second node joined to it on
this machine, each with its own temp dir; a real server reaches it through EDGETUNE_RAY_ADDRESS.

The cluster is stopped by terminating the `ray start --block` processes' groups, never with
`ray stop`, which would also stop every other Ray on the machine (the local Ray that other tests
in this pytest process start). Ray's worker processes run in process groups of their own and
rename themselves (`ray::...`), so every process of the cluster carries a marker variable in its
environment, by which the test checks that none outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from servers import start_server, stop_server

from edgetune.cli import free_port
from edgetune.client import Client

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("ray"),  # one Ray at a time
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)"),
]

MARKER_VAR = "EDGETUNE_TEST_RAY_CLUSTER"
#: Bounds on each wait; generous, since the machine may be busy with other work.
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0

#: A short-lived driver that waits until `n` nodes are alive and prints their ids.
ALIVE_NODES = """
import json, sys, time
import ray
address, n, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, log_to_driver=False, include_dashboard=False)
deadline = time.monotonic() + timeout
while True:
    alive = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    if len(alive) >= n or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(alive))
"""


@dataclass
class RayCluster:
    address: str
    #: What a driver of this cluster needs in its environment (Ray's token authentication).
    driver_env: dict[str, str]
    marker: str
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    node_ids: list[str] = field(default_factory=list)

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(
            f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-n:])
            for log in self.logs if log.exists()
        )


def cluster_processes(marker: str) -> list[int]:
    """Every live process whose environment carries this cluster's marker."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def ray_start(args: list[str], temp_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    temp_dir.mkdir(parents=True)
    log = temp_dir / "ray-start.log"
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", *args,
             "--temp-dir", str(temp_dir), "--num-cpus", "1", "--num-gpus", "0",
             "--object-store-memory", str(100 * 1024**2),
             "--dashboard-agent-listen-port", str(free_port()),
             "--include-log-monitor", "false", "--disable-usage-stats", "--block"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # its own process group, to stop it and its children
        )


def wait_for_address(cluster: RayCluster, temp_dir: Path, deadline: float) -> str:
    """The GCS address the head wrote in its temp dir, once it accepts connections."""
    written = temp_dir / "ray_current_cluster"
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in cluster.nodes):
            raise RuntimeError(f"a Ray node exited early:\n{cluster.log_tail()}")
        address = written.read_text().strip() if written.exists() else ""
        host, _, port = address.rpartition(":")
        if host and port.isdigit():
            with contextlib.suppress(OSError):
                socket.create_connection((host, int(port)), timeout=2).close()
                return address
        time.sleep(0.2)
    raise RuntimeError(f"the Ray head did not start in {START_TIMEOUT_S} s:\n{cluster.log_tail()}")


def stop_cluster(cluster: RayCluster) -> list[int]:
    """Terminate the nodes' process groups; SIGKILL whatever is left after STOP_TIMEOUT_S.
    Returns the processes that had to be killed (none, when Ray shut down cleanly)."""
    for node in reversed(cluster.nodes):  # the joined node first, the head last
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for node in cluster.nodes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.wait(timeout=max(0.1, deadline - time.monotonic()))
    while (left := cluster_processes(cluster.marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for node in cluster.nodes:
        if node.poll() is None:
            node.wait(timeout=10)
    return left


@pytest.fixture
def ray_cluster() -> Iterator[RayCluster]:
    token = secrets.token_hex(32)
    # Ray (2.60) turns token authentication on for `ray start --head` when ~/.ray/auth_token
    # exists (a local `ray.init()` writes one), but not for nodes and drivers given an explicit
    # address: set it on every side explicitly, with a token of this cluster's own.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    marker = secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(auth)
    env.update({
        MARKER_VAR: marker,
        # Stop at SIGTERM at once instead of draining the node for up to 30 s first.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    })
    cluster = RayCluster(address="", driver_env=auth, marker=marker)
    # Short paths: Ray's sockets live in the temp dir, and a socket path has at most 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="etray-", dir="/tmp"))
    head_dir, node_dir = root / "head", root / "node"
    cluster.logs = [head_dir / "ray-start.log", node_dir / "ray-start.log"]
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        cluster.nodes.append(ray_start(
            ["--head", "--port", str(free_port()), "--include-dashboard", "false"], head_dir, env,
        ))
        cluster.address = wait_for_address(cluster, head_dir, deadline)
        cluster.nodes.append(ray_start(["--address", cluster.address], node_dir, env))
        alive = subprocess.run(
            [sys.executable, "-c", ALIVE_NODES, cluster.address, "2",
             str(max(1.0, deadline - time.monotonic()))],
            env={k: v for k, v in env.items() if k != MARKER_VAR}, capture_output=True, text=True,
            timeout=START_TIMEOUT_S + 30,
        )
        assert alive.returncode == 0, f"{alive.stderr[-3000:]}\n{cluster.log_tail()}"
        cluster.node_ids = json.loads(alive.stdout.strip().splitlines()[-1])
        assert len(cluster.node_ids) == 2, f"alive nodes: {cluster.node_ids}\n{cluster.log_tail()}"
        yield cluster
    finally:
        killed = stop_cluster(cluster)
        shutil.rmtree(root, ignore_errors=True)
    assert not killed, f"Ray processes outlived SIGTERM and were killed: {killed}"
    assert not cluster_processes(marker)


def digits_job() -> dict:
    # Trials of a few seconds: a trial of the `function` trainer ends before the second node's
    # actor is up, and Tune then reuses the first node's actor for every trial.
    return {
        "name": "ray-cluster-digits", "seed": 5,
        "trainer": {"name": "image-classifier", "dataset": "digits", "epochs": 2},
        "space": {"name": "cnn", "params": [{"type": "int", "name": "depth", "low": 1,
                                             "high": 2}]},
        "objectives": [{"name": "accuracy"}],
        "algorithm": {"backend": "ray", "sampler": "random"},
        "budget": {"n_trials": 6, "parallelism": 2},
        "resources": {"cpus": 1},
    }


def test_a_job_runs_on_both_nodes_of_an_existing_cluster(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    server = start_server(
        tmp_path / "server", workers=1,
        env={"EDGETUNE_RAY_ADDRESS": ray_cluster.address, **ray_cluster.driver_env},
    )
    try:
        with Client(server.url) as client:
            job = client.submit(digits_job())
            job = client.wait(job.id, timeout=600, poll_interval=1.0)
            assert job.status == "succeeded", (
                f"{job.error}\n{server.log_tail()}\n{ray_cluster.log_tail()}"
            )
            trials = client.trials(job.id).data
            assert len(trials) == 6 and all(t.state == "complete" for t in trials)
            for t in trials:  # exported on either node into the server's data directory
                model = client.download_artifact(job.id, t.number, tmp_path / f"{t.number}.onnx")
                assert model.stat().st_size > 0
    finally:
        stop_server(server)
    # With one CPU per node and per trial, two trials at once take a node each.
    nodes = {t.user_attrs["ray_node_id"] for t in trials}
    assert nodes == set(ray_cluster.node_ids)
    assert all("ray_gpu_ids" not in t.user_attrs for t in trials)
