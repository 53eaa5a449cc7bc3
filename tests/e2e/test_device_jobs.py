"""Searches measure latency on registered devices through their agents (real processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import RunningServer, start_server, stop_server
from test_agent import Agents, wait_device

from edgetune.client import Client
from edgetune.errors import InvalidSpecError

pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow

PROBE_TIMEOUT_S = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("device-jobs"), workers=1, env={
        "EDGETUNE_PROBE_TIMEOUT_S": str(PROBE_TIMEOUT_S),
        "EDGETUNE_LATENCY_MIN_TIME_S": "0", "EDGETUNE_LATENCY_MIN_REPEATS": "5",
    })
    yield running
    stop_server(running)


@pytest.fixture
def agents(server: RunningServer, tmp_path: Path) -> Iterator[Agents]:
    running = Agents(server, tmp_path)
    yield running
    running.stop_all()


def job(name: str, device: str) -> dict:
    return {
        "name": name, "seed": 1,
        "trainer": {"epochs": 1},
        "space": {"name": "cnn", "params": [{"type": "int", "name": "depth", "low": 1,
                                             "high": 2}]},
        "objectives": [{"name": "accuracy"}, {"name": "latency_ms", "device": device}],
        "algorithm": {"sampler": "random"},
        "budget": {"n_trials": 2, "parallelism": 1},
    }


def test_a_job_measures_latency_on_an_agent_backed_device(
    server: RunningServer, agents: Agents
) -> None:
    with Client(server.url) as client:
        agents.start("board")
        wait_device(client, "board", agents)
        done = client.wait(client.submit(job("on-board", "board")).id, timeout=300)
        assert done.status == "succeeded", f"{done.error}\n{server.log_tail()}\n{agents.logs()}"
        trials = client.trials(done.id).data
        assert len(trials) == 2 and all(t.state == "complete" for t in trials)
        for t in trials:
            measured = t.user_attrs["latency@board"]
            assert measured["source"] == "agent" and measured["n"] >= 5
            assert t.values["latency_ms@board"] == measured["p50_ms"] > 0
            probe = client.get_probe(measured["probe_id"])
            assert probe.status == "done" and probe.artifact_sha256 == (
                t.user_attrs["artifact"]["sha256"])


def test_a_device_without_an_agent_fails_trials_with_the_reason_and_the_job_ends(
    server: RunningServer,
) -> None:
    with Client(server.url) as client:
        client.register_device("shelf", runtimes=["onnxruntime"], threads=1)
        spec = job("on-shelf", "shelf")
        spec["budget"]["n_trials"] = 2  # each waits out the probe timeout
        done = client.wait(client.submit(spec).id, timeout=300)
        assert done.status == "failed"
        assert "no agent of the device measured the model" in (done.error or "")
        trial = client.trials(done.id).data[0]
        assert trial.state == "fail" and "'shelf'" in (trial.error or "")


def test_an_unregistered_device_is_refused_at_submission(server: RunningServer) -> None:
    with Client(server.url) as client, pytest.raises(InvalidSpecError, match="unknown device"):
        client.submit(job("nowhere", "nowhere"))
