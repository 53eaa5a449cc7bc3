"""Attacks on the probe queue through a real server: a probe no agent ever takes expires with
the reason and frees its upload; racing uploads cannot pass the quota together; models that
name files or custom operators are refused; another tenant's agent token reaches nothing of
this tenant's.

The server runs with a 2 s probe expiry and a quota of one model, so that each attack ends
quickly; the defaults are an hour and 256 models, the mechanism the same.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from servers import RunningServer, create_token, start_server, stop_server

pytest.importorskip("onnx")

from hostile_models import INPUT, custom_domain, file_reader, relu

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
