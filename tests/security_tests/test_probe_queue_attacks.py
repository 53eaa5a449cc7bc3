"""Attacks on the probe queue through a real server: a probe no agent ever takes expires with
the reason and frees its upload; a probe whose agents are killed while measuring it stops at
the attempt cap; racing uploads cannot pass the quota together; models that name files or
custom operators are refused; another tenant's agent token reaches nothing of this tenant's.

The servers run with a 2 s probe expiry, 1 s leases and a quota of one model, so that each
attack ends quickly; the defaults are an hour, a minute and 256 models, the mechanism the
same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
)

pytest.importorskip("onnx")

from hostile_models import INPUT, custom_domain, endless_loop, file_reader, relu

pytestmark = pytest.mark.slow

EXPIRE_S = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("queue"), workers=0, env={
        "EDGETUNE_PROBE_EXPIRE_S": str(EXPIRE_S),
        "EDGETUNE_UPLOAD_QUOTA_COUNT": "1",
    })
    yield running
    stop_server(running)


def client(server: RunningServer, *, scope: str, tenant: str = "default") -> httpx.Client:
    token = create_token(server, scope=scope, tenant=tenant)
    return httpx.Client(base_url=server.url + "/api/v1", timeout=30,
                        headers={"Authorization": f"Bearer {token}"})


def register(agent: httpx.Client, name: str) -> dict[str, Any]:
    """A device whose agent never comes: registered, then silent."""
    answer = agent.post("/devices", json={"name": name, "runtimes": ["onnxruntime"]})
    assert answer.status_code in (200, 201), answer.text
    device: dict[str, Any] = answer.json()
    return device


def upload(user: httpx.Client, body: bytes, device: str) -> httpx.Response:
    return user.post("/probes", content=body,
                     params={"device": device, "input_shape": INPUT, "warmup": 0,
                             "min_repeats": 1, "min_time_s": 0},
                     headers={"Content-Type": "application/octet-stream"})


def test_a_probe_no_agent_takes_expires_and_frees_its_upload(server: RunningServer) -> None:
    with client(server, scope="user") as user, client(server, scope="agent") as agent:
        register(agent, "silent")
        queued = upload(user, relu(0), "silent")
        assert queued.status_code == 202, queued.text
        probe = queued.json()
        # The quota of one is taken while the probe waits.
        assert upload(user, relu(1), "silent").status_code == 413

        deadline = time.monotonic() + EXPIRE_S + 20
        while (shown := user.get(f"/probes/{probe['id']}").json())["status"] == "pending":
            assert time.monotonic() < deadline, shown
            time.sleep(0.3)
        assert shown["status"] == "failed" and shown["result"] is None
        assert f"within {EXPIRE_S} s" in shown["error"] and "probe_expire_s" in shown["error"]

        # Its upload is collected (once its file is older than the collector's grace, as an
        # hour-long expiry makes it) and the quota takes another model.
        stored = server.data_dir / "artifacts" / f"{probe['artifact_sha256']}.onnx"
        os.utime(stored, (0, 0))
        again = upload(user, relu(1), "silent")
        assert again.status_code == 202, again.text
        assert not stored.exists()


def test_racing_uploads_cannot_pass_the_quota_together(server: RunningServer) -> None:
    with client(server, scope="user", tenant="racers") as user, \
            client(server, scope="agent", tenant="racers") as agent:
        register(agent, "target")
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda v: upload(user, relu(100 + v), "target"), range(6)))
        codes = sorted(a.status_code for a in answers)
        assert codes == [202] + [413] * 5, [a.text for a in answers]
        assert user.get("/probes").json()["count"] == 1


def test_models_that_name_a_file_or_a_custom_operator_are_refused(
    server: RunningServer,
) -> None:
    # A file the server can read from its working directory and its data directory.
    secret = server.data_dir / "secret.bin"
    secret.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00" * 2)
    with client(server, scope="user", tenant="files") as user, \
            client(server, scope="agent", tenant="files") as agent:
        register(agent, "target")
        for body in (file_reader("secret.bin"), file_reader(str(secret)),
                     file_reader("secret.bin", sparse=False), custom_domain()):
            answer = upload(user, body, "target")
            assert answer.status_code == 422, answer.text
            detail = str(answer.json()["detail"])
            assert "external file" in detail or "operator domain" in detail, detail
        assert user.get("/probes").json()["count"] == 0


def test_ids_that_are_paths_or_carry_nul_bytes_are_refused_before_the_database(
    server: RunningServer,
) -> None:
    token = server.data_dir / "token"
    with client(server, scope="user") as user:
        for path in ("/probes/abc%00def", "/probes/..%2F..%2Ftoken", "/probes/" + "a" * 65,
                     "/artifacts/..%2Ftoken", "/artifacts/" + "0" * 63 + "%00"):
            answer = user.get(path)
            assert answer.status_code in (404, 422), (path, answer.text)
            if token.exists():
                assert token.read_text().strip() not in answer.text
        assert user.get("/probes/abc%00def").status_code == 422


def test_another_tenants_agent_reaches_nothing_of_this_tenant(server: RunningServer) -> None:
    with client(server, scope="user", tenant="victim") as user, \
            client(server, scope="agent", tenant="victim") as agent, \
            client(server, scope="agent", tenant="intruder") as intruder:
        device = register(agent, "target")
        probe = upload(user, relu(7), "target").json()
        leased = intruder.post(f"/devices/{device['id']}/probes:lease", json={"agent": "x"})
        assert leased.status_code == 404, leased.text
        for route, body in ((":complete", {"agent": "x", "result": {
                "p50_ms": 0.001, "p90_ms": 0.001, "mean_ms": 0.001, "std_ms": 0, "n": 1}}),
                            (":fail", {"agent": "x", "reason": "forged"})):
            answer = intruder.post(f"/probes/{probe['id']}{route}", json=body)
            assert answer.status_code == 404, answer.text
        assert intruder.get(f"/artifacts/{probe['artifact_sha256']}").status_code == 404
        assert intruder.get(f"/probes/{probe['id']}").status_code == 404
        assert user.get(f"/probes/{probe['id']}").json()["status"] in ("pending", "failed")


@pytest.fixture(scope="module")
def short_leases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("leases"), workers=0,
                           env={"EDGETUNE_PROBE_LEASE_S": "1", "EDGETUNE_PROBE_MAX_LIVE": "3"})
    yield running
    stop_server(running)


def test_a_probe_whose_agents_are_killed_measuring_it_stops_at_the_attempt_cap(
    short_leases: RunningServer, tmp_path: Path
) -> None:
    # Each agent is SIGKILLed mid-way through a model that never ends (as the kernel's OOM
    # killer would end it): its lease runs out, and the next agent takes the probe again,
    # until the third.
    server = short_leases
    token = create_token(server, scope="agent")
    with client(server, scope="user") as user, client(server, scope="agent") as agent:
        register(agent, "doomed")
        probe = upload(user, endless_loop(), "doomed").json()
        for attempt in (1, 2, 3):
            log = tmp_path / f"agent-{attempt}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "edgetune", "agent", "--server", server.url,
                     "--token", token, "--name", "doomed", "--runtime", "onnxruntime",
                     "--poll-s", "1", "--measure-timeout-s", "600", "--log-level", "info"],
                    stdout=out, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 60
                while f"measuring probe {probe['id']}" not in log.read_text(errors="replace"):
                    assert process.poll() is None and time.monotonic() < deadline, \
                        log.read_text(errors="replace")
                    time.sleep(0.1)
                children = child_pids(process.pid)
            finally:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)
            shown = user.get(f"/probes/{probe['id']}").json()
            assert shown["attempts"] == attempt, shown
            # Its measuring child died with it: nothing keeps running the model.
            deadline = time.monotonic() + 5
            while any(is_alive(pid) for pid in children):
                assert time.monotonic() < deadline, children
                time.sleep(0.1)

        time.sleep(1.5)  # the last lease runs out; no agent comes back
        failed = user.get(f"/probes/{probe['id']}").json()
        assert failed["status"] == "failed" and failed["attempts"] == 3, failed
        assert "stopped answering while measuring, 3 times" in failed["error"]


def test_one_model_asked_in_ever_other_ways_cannot_flood_the_queue(
    short_leases: RunningServer,
) -> None:
    # The upload quota counts the model once; the probes it asks for are bounded on their own.
    with client(short_leases, scope="user", tenant="flood") as user, \
            client(short_leases, scope="agent", tenant="flood") as agent:
        register(agent, "target")
        answers = [user.post("/probes", content=relu(), headers={
            "Content-Type": "application/octet-stream"}, params={
            "device": "target", "input_shape": INPUT, "min_repeats": repeats})
            for repeats in range(1, 5)]
        assert [a.status_code for a in answers] == [202, 202, 202, 429], answers[-1].text
        assert "probe_max_live 3" in answers[-1].json()["detail"]
        assert user.get("/probes").json()["count"] == 3

