"""Attacks on the device agent with a user-scope token, against a real server and a real
`python -m edgetune agent` process: each is refused or contained, and the agent goes on.

The agent runs with short limits (a 4 s time limit, a 1 GiB memory limit) so that the attacks
end quickly; the defaults are longer and larger, the mechanism the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import (
    RunningServer,
    child_pids,
    create_token,
    is_alive,
    start_server,
    stop_server,
    until,
)

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from hostile_models import INPUT, endless_loop, huge_constant, relu

pytestmark = pytest.mark.slow

MEASURE_TIMEOUT_S = 4.0
MEMORY_BYTES = 1 << 30
QUICK: dict[str, Any] = {"warmup": 1, "min_repeats": 3, "min_time_s": 0.0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("hostile"), workers=0, env={
        # Shorter than the agents' measuring limit: the holder renews its lease with each
        # heartbeat (0.3 s), so a probe fails by its agent's limits, and no other agent takes
        # over a probe still being measured.
        "EDGETUNE_PROBE_LEASE_S": "2",
        "EDGETUNE_PROBE_MAX_INPUT_ELEMENTS": str(1 << 20),
    })
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def user(server: RunningServer) -> Iterator[httpx.Client]:
    """The attacker: a user-scope token of tenant `default`, no more."""
    token = create_token(server, scope="user")
    with httpx.Client(base_url=server.url + "/api/v1", timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


class Agent:
    """One `python -m edgetune agent` process with short limits, logging to a file."""

    def __init__(self, server: RunningServer, directory: Path, name: str) -> None:
        self.log_path = directory / f"agent-{name}.log"
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgetune", "agent", "--server", server.url,
                 "--token", create_token(server, scope="agent"), "--name", name,
                 "--runtime", "onnxruntime", "--runtime", "torchscript",
                 "--heartbeat-s", "0.3", "--poll-s", "1",
                 "--measure-timeout-s", str(MEASURE_TIMEOUT_S),
                 "--memory-bytes", str(MEMORY_BYTES), "--log-level", "info"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ},
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def agent(server: RunningServer, user: httpx.Client,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    running = Agent(server, tmp_path_factory.mktemp("agent"), "target")
    until("registered", lambda: any(d["name"] == "target"
                                    for d in user.get("/devices").json()["data"]),
          on_timeout=running.log)
    yield running
    running.stop()



def upload(user: httpx.Client, body: bytes, *, device: str = "target",
           runtime: str = "onnxruntime", input_shape: list[int] = INPUT,
           **params: Any) -> httpx.Response:
    return user.post("/probes", content=body,
                     params={"device": device, "runtime": runtime, "input_shape": input_shape,
                             **QUICK, **params},
                     headers={"Content-Type": "application/octet-stream"})


def finished(user: httpx.Client, probe_id: str, agent: Agent, *,
             timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        probe: dict[str, Any] = user.get(f"/probes/{probe_id}").json()
        return probe if probe["status"] in ("done", "failed") else None

    found: dict[str, Any] = until(f"probe {probe_id} finished", check, timeout=timeout,
                                  on_timeout=agent.log)
    return found


def measures_the_next_probe(user: httpx.Client, agent: Agent, **params: Any) -> None:
    response = upload(user, relu(), **params)
    assert response.status_code in (200, 202), response.text
    done = finished(user, response.json()["id"], agent)
    assert done["status"] == "done", (done, agent.log())
    assert agent.process.poll() is None


def test_a_torchscript_upload_is_refused_and_reads_no_file(
    user: httpx.Client, agent: Agent, server: RunningServer, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    secret = f"the-admin-token-{os.urandom(8).hex()}"
    target = tmp_path / "victim.txt"
    target.write_text(secret)
    before = (target.read_bytes(), target.stat().st_mtime_ns)
    # A scripted module that reads the file with torch.from_file, overwrites it, and raises
    # its contents as the error: what an agent that loaded it would have run and reported.
    source = tmp_path / "reader.py"
    source.write_text(textwrap.dedent(f'''
        from typing import List

        import torch

        class Reader(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                data = torch.from_file({str(target)!r}, True, {len(secret)},
                                       dtype=torch.uint8)
                values: List[int] = data.tolist()
                data.fill_(65)
                raise RuntimeError("read: " + str(values))
        '''))
    sys.path.insert(0, str(tmp_path))
    try:
        import reader

        scripted = torch.jit.script(reader.Reader())
    finally:
        sys.path.remove(str(tmp_path))
    body_path = tmp_path / "reader.pt"
    torch.jit.save(scripted, str(body_path))
    body = body_path.read_bytes()
    probes_before = user.get("/probes").json()["count"]

    responses = [
        upload(user, body, runtime="torchscript"),
        upload(user, body, runtime="onnxruntime"),  # the same program, named as ONNX
    ]
    assert responses[0].status_code == 422, responses[0].text
    assert "torchscript" in str(responses[0].json()["detail"]).lower()
    assert responses[1].status_code == 422, responses[1].text
    assert "not a valid ONNX model" in str(responses[1].json()["detail"])
    # Nothing was queued or stored, so nothing could run it.
    listed = user.get("/probes", params={"limit": 500})
    assert listed.json()["count"] == probes_before
    assert not list((server.data_dir / "artifacts").glob("*.pt"))
    time.sleep(1.0)  # an agent's poll, had anything been queued
    assert (target.read_bytes(), target.stat().st_mtime_ns) == before
    for response in [*responses, listed]:
        assert secret not in response.text
    assert secret not in agent.log()


def test_an_endless_loop_fails_its_probe_at_the_time_limit_and_the_agent_goes_on(
    user: httpx.Client, agent: Agent, server: RunningServer, tmp_path: Path
) -> None:
    # A second agent of the device, idle while the first measures past the server's lease: it
    # must not take the probe over (and hang on it in turn).
    second = Agent(server, tmp_path, "target")
    try:
        until("the second agent attached", lambda: "device 'target'" in second.log(),
              on_timeout=second.log)
        response = upload(user, endless_loop())
        assert response.status_code == 202, response.text
        probe = response.json()
        failed = finished(user, probe["id"], agent, timeout=MEASURE_TIMEOUT_S + 40)
    finally:
        second.stop()
    assert failed["status"] == "failed" and failed["result"] is None
    assert f"time limit of {MEASURE_TIMEOUT_S:g} s" in failed["error"], failed
    assert failed["attempts"] == 1  # failed by its agent, never leased again
    assert len(failed["error"]) <= 300 and failed["error"].isprintable()
    measures_the_next_probe(user, agent)


def test_a_model_over_the_memory_limit_fails_its_probe_and_the_agent_goes_on(
    user: httpx.Client, agent: Agent
) -> None:
    response = upload(user, huge_constant(8 << 30))
    assert response.status_code == 202, response.text
    failed = finished(user, response.json()["id"], agent)
    assert failed["status"] == "failed"
    assert "memory" in failed["error"] and f"{MEMORY_BYTES:,} bytes" in failed["error"], failed
    measures_the_next_probe(user, agent, warmup=2)


def test_an_input_too_large_to_build_is_refused_naming_the_bound(
    user: httpx.Client, agent: Agent
) -> None:
    response = upload(user, relu(), input_shape=[20000, 20000])
    assert response.status_code == 422, response.text
    detail = str(response.json()["detail"])
    assert "input_shape" in detail and f"{1 << 20:,}" in detail, detail
    assert agent.process.poll() is None


def test_a_forged_complete_is_refused_and_never_cached(
    user: httpx.Client, agent: Agent, server: RunningServer
) -> None:
    # A probe the agent holds for long (a model that never ends), and a second agent token
    # that never leased it, using every owner name it can read.
    response = upload(user, endless_loop(trips=2**40), warmup=3)
    probe = response.json()
    leased = until("leased", lambda: (p := user.get(f"/probes/{probe['id']}").json())
                   ["status"] == "leased" and p, on_timeout=agent.log)
    assert leased["lease_owner"] is None  # the holder's name is its secret while it holds it
    forger = create_token(server, scope="agent")
    forged = {"p50_ms": 0.001, "p90_ms": 0.001, "mean_ms": 0.001, "std_ms": 0.0, "n": 1}
    device = next(d for d in user.get("/devices").json()["data"] if d["name"] == "target")
    names = {"forger", device["id"], *(p["lease_owner"] for p in user.get(
        "/probes", params={"status": "done"}).json()["data"])}
    for name in names:
        answer = httpx.post(f"{server.url}/api/v1/probes/{probe['id']}:complete",
                            json={"agent": name, "result": forged},
                            headers={"Authorization": f"Bearer {forger}"}, timeout=30)
        assert answer.status_code == 409, answer.text
    # A user token may not report at all.
    answer = user.post(f"/probes/{probe['id']}:complete",
                       json={"agent": "forger", "result": forged})
    assert answer.status_code == 403, answer.text
    failed = finished(user, probe["id"], agent, timeout=MEASURE_TIMEOUT_S + 40)
    assert failed["status"] == "failed" and failed["result"] is None
    # Asked again, the cache has nothing forged to answer with: measured afresh.
    again = upload(user, endless_loop(trips=2**40), warmup=3)
    assert again.status_code == 202 and again.json()["id"] != probe["id"]


def test_the_agent_honours_sigterm_within_5_s_mid_measurement(
    user: httpx.Client, server: RunningServer, tmp_path: Path
) -> None:
    # An agent of its own, killed last: mid-way through a model that never ends.
    doomed = Agent(server, tmp_path, "doomed")
    try:
        until("registered", lambda: any(d["name"] == "doomed"
                                        for d in user.get("/devices").json()["data"]),
              on_timeout=doomed.log)
        response = upload(user, endless_loop(), device="doomed", warmup=4)
        probe_id = response.json()["id"]
        until("measuring", lambda: f"measuring probe {probe_id}" in doomed.log(),
              on_timeout=doomed.log)
        children = child_pids(doomed.process.pid)
        start = time.monotonic()
        doomed.process.send_signal(signal.SIGTERM)
        assert doomed.process.wait(timeout=5) == 0, doomed.log()
        assert time.monotonic() - start < 5
        # Its measuring child went with it.
        until("measuring child gone", lambda: not any(is_alive(pid) for pid in children),
              timeout=5)

        # And idle, in a long poll: also within 5 s.
        idle = Agent(server, tmp_path, "idle")
        until("polling", lambda: "registered" in idle.log() or "re-attached" in idle.log(),
              on_timeout=idle.log)
        time.sleep(1.5)
        start = time.monotonic()
        idle.process.send_signal(signal.SIGTERM)
        assert idle.process.wait(timeout=5) == 0, idle.log()
    finally:
        doomed.stop()

