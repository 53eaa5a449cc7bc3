"""End to end: a real server and real `edgetune agent` processes measuring ad-hoc probes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from servers import RunningServer, create_token, start_server, stop_server, until
from torch import nn

from edgetune.client import Client
from edgetune.schemas import ProbePublic
from edgetune.trainers.export import export_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow

LEASE_S = 2.0
OFFLINE_AFTER_S = 2.0
#: Quick measurements: min_time_s=0 lets min_repeats alone end the timing.
QUICK: dict[str, Any] = {"warmup": 1, "min_repeats": 5, "min_time_s": 0.0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("agents"), workers=0, env={
        "EDGETUNE_PROBE_LEASE_S": str(LEASE_S),
        "EDGETUNE_DEVICE_OFFLINE_AFTER_S": str(OFFLINE_AFTER_S),
    })
    yield running
    stop_server(running)


@pytest.fixture
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.url) as c:
        yield c


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return export_model(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)),
                        torch.randn(1, 16), tmp_path_factory.mktemp("model"),
                        format="onnx").path


class Agents:
    """`edgetune agent` subprocesses, each logging to its own file; all stopped at the end."""

    def __init__(self, server: RunningServer, directory: Path) -> None:
        self.server = server
        self.directory = directory
        self.token = create_token(server, scope="agent")  # what an agent needs, no more
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str) -> subprocess.Popen[bytes]:
        log = self.directory / f"agent-{len(self.running)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "edgetune", "agent", "--server", self.server.url,
                 "--token", self.token, "--name", name, "--threads", "1",
                 "--heartbeat-s", "0.3", "--poll-s", "1", "--log-level", "info"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ},
            )
        self.running.append((process, log))
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        return next(log for p, log in self.running if p is process).read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                         for _, log in self.running)

    def stop_all(self) -> None:
        for process, _ in self.running:
            if process.poll() is None:
                process.terminate()
        for process, _ in self.running:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture
def agents(server: RunningServer, tmp_path: Path) -> Iterator[Agents]:
    running = Agents(server, tmp_path)
    yield running
    running.stop_all()



def wait_device(client: Client, name: str, agents: Agents) -> str:
    def find() -> str | None:
        return next((d.id for d in client.devices().data if d.name == name), None)

    found: str = until(f"registered {name}", find, on_timeout=agents.logs)
    return found


def test_an_agent_registers_measures_a_probe_and_goes_offline_when_stopped(
    client: Client, agents: Agents, model: Path
) -> None:
    process = agents.start("edge-a")
    device_id = wait_device(client, "edge-a", agents)
    device = client.device(device_id)
    assert device.status == "online" and device.runtimes == ["onnxruntime"]
    assert device.threads == 1
    assert device.hardware["cores"] >= 1 and device.hardware["cpu"]
    assert "onnxruntime" in device.hardware["libraries"]
    assert device.hardware["measures_on"] == "cpu"
    assert device.hardware["pinned_cpus"] == [min(os.sched_getaffinity(0))]

    probe = client.probe(model, device="edge-a", input_shape=[16], batch_size=1, **QUICK)
    assert probe.status in ("pending", "leased", "done")
    done = client.wait_probe(probe.id, timeout=60)
    assert done.status == "done", (done.error, agents.logs())
    assert done.result is not None
    result = done.result
    assert result.n >= QUICK["min_repeats"] and result.threads == 1
    assert result.model_extra is not None and result.model_extra["device"] == "cpu"
    assert result.model_extra["cpus"] == device.hardware["pinned_cpus"]
    assert 0 < result.p50_ms <= result.p90_ms and result.mean_ms > 0 and result.std_ms >= 0
    assert result.model_extra is not None and result.model_extra["batch_size"] == 1
    # Each lease is taken under the agent's id and a secret of that lease's own.
    assert done.attempts == 1 and done.lease_owner is not None
    assert done.lease_owner.split("/")[0] == result.model_extra["agent"]

    # The same model, device and config again: the cache answers, nothing is measured.
    again = client.probe(model, device=device_id, input_shape=[16], batch_size=1, **QUICK)
    assert again.id == probe.id and again.status == "done"

    # The agent stops cleanly on SIGTERM; without heartbeats the device goes offline.
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, agents.log(process)
    assert "stopped" in agents.log(process)
    until("offline", lambda: client.device(device_id).status == "offline",
          timeout=OFFLINE_AFTER_S * 10)


def test_two_agents_on_one_device_never_take_the_same_probe(
    client: Client, agents: Agents, model: Path
) -> None:
    first = agents.start("edge-b")
    wait_device(client, "edge-b", agents)
    second = agents.start("edge-b")  # re-attaches: one device, two agents
    # Distinct warm-up counts make distinct measurements, so none is answered from the cache.
    probes = [client.probe(model, device="edge-b", input_shape=[16],
                           **{**QUICK, "warmup": warmup}) for warmup in range(8)]
    assert len({p.id for p in probes}) == len(probes)
    done = [client.wait_probe(p.id, timeout=90) for p in probes]
    assert [p.status for p in done] == ["done"] * len(done), agents.logs()
    # Each leased once, by one agent, and measured once.
    assert [p.attempts for p in done] == [1] * len(done)
    assert len(client.devices().data) >= 1
    assert [d.name for d in client.devices().data].count("edge-b") == 1
    logs = agents.log(first) + agents.log(second)
    for p in done:
        assert logs.count(f"measuring probe {p.id}") == 1, logs


def test_a_probe_of_a_killed_agent_is_finished_by_another_after_its_lease(
    client: Client, agents: Agents, model: Path
) -> None:
    doomed = agents.start("edge-c")
    wait_device(client, "edge-c", agents)
    # Long enough to be killed mid-measurement; the lease is much shorter.
    probe = client.probe(model, device="edge-c", input_shape=[16], warmup=1, min_repeats=5,
                         min_time_s=4.0)
    leased: ProbePublic = until(
        "leased", lambda: (p := client.get_probe(probe.id)).status == "leased" and p,
        on_timeout=agents.logs,
    )
    until("measuring", lambda: f"measuring probe {probe.id}" in agents.log(doomed),
          on_timeout=agents.logs)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    assert client.get_probe(probe.id).status == "leased"  # nobody reported anything

    rescuer = agents.start("edge-c")
    done = client.wait_probe(probe.id, timeout=90)
    assert done.status == "done", (done.error, agents.logs())
    assert done.attempts == 2
    # While leased, who holds it is the holder's secret; the doomed agent's lease was not
    # the one that finished it.
    assert leased.lease_owner is None and done.lease_owner is not None
    assert done.lease_owner.split("/")[0] not in agents.log(doomed)
    assert f"measuring probe {probe.id}" in agents.log(rescuer)


def test_a_model_that_cannot_run_fails_its_probe_with_the_reason(
    client: Client, agents: Agents, model: Path, tmp_path: Path
) -> None:
    process = agents.start("edge-d")
    wait_device(client, "edge-d", agents)
    # A valid model asked to run on an input of the wrong size: the runtime refuses it.
    probe = client.probe(model, device="edge-d", input_shape=[17], **QUICK)
    failed = client.wait_probe(probe.id, timeout=60)
    assert failed.status == "failed" and failed.result is None, agents.logs()
    assert failed.error is not None
    assert "model" in failed.error and probe.artifact_sha256[:12] in failed.error
    assert len(failed.error) <= 300 and failed.error.isprintable()
    # The agent goes on measuring: a failure is the probe's, not the agent's.
    assert process.poll() is None
    ok = client.probe(model, device="edge-d", input_shape=[16], **QUICK)
    assert client.wait_probe(ok.id, timeout=60).status == "done", agents.logs()
