"""Oversized uploads: a 300 MiB model against a 256 MiB cap gets 413, and the server neither
holds the body in memory nor keeps a partial file of it. Bodies that are not ONNX models are
refused before anything is queued or stored; a tenant's uploads count against a quota, and
are collected once no probe names them.

The test streams its bodies from a generator (one 1 MiB buffer, sent again and again), so
that it does not hold 300 MiB itself; the server's memory is read from /proc (VmRSS of the
`serve` process and its children) while the upload runs.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import pytest
from servers import RunningServer, auth_headers, start_server, stop_server

pytest.importorskip("onnx")

from hostile_models import relu

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
CAP = 256 * MiB
BODY = 300 * MiB
#: How much the server's memory may grow while it refuses the body.
MAX_GROWTH = 50 * MiB
QUERY = {"device": "board", "runtime": "onnxruntime", "input_shape": [1, 8]}
QUOTA_COUNT = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("uploads"), workers=0,
                           env={"EDGETUNE_MAX_UPLOAD_BYTES": str(CAP),
                                "EDGETUNE_UPLOAD_QUOTA_COUNT": str(QUOTA_COUNT)})
    answer = httpx.post(f"{running.url}/api/v1/devices", headers=auth_headers(),
                        json={"name": "board", "runtimes": ["onnxruntime"]}, timeout=30)
    assert answer.status_code in (200, 201), answer.text
    yield running
    stop_server(running)


def tree_rss_bytes(pid: int) -> int:
    """VmRSS of `pid` and of every process below it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with suppress(OSError, IndexError, ValueError):  # it exited meanwhile
                parents[int(entry)] = int(
                    Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
    tree, grown = {pid}, True
    while grown:
        below = {p for p, parent in parents.items() if parent in tree} - tree
        grown = bool(below)
        tree |= below
    total = 0
    for p in tree:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass  # it exited meanwhile
    return total


class PeakRSS:
    """Samples the server's memory every 20 ms in a thread, for the `with` block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = tree_rss_bytes(pid)
        self.peak = self.baseline
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, tree_rss_bytes(self.pid))

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, tree_rss_bytes(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


class Body:
    """`size` bytes from one reused 1 MiB buffer; counts what the client got to send."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        chunk = b"\0" * MiB
        while self.sent < self.size:
            piece = chunk[: min(MiB, self.size - self.sent)]
            self.sent += len(piece)
            yield piece


def upload(server: RunningServer, body: Body, *, declare_length: bool) -> httpx.Response:
    headers = {**auth_headers(), "Content-Type": "application/octet-stream"}
    if declare_length:  # httpx streams a generator chunked unless given the length
        headers["Content-Length"] = str(body.size)
    return httpx.post(f"{server.url}/api/v1/probes", params=QUERY, headers=headers,
                      content=iter(body), timeout=120)


def partial_files(server: RunningServer) -> list[Path]:
    return list((server.data_dir / "artifacts").glob(".upload-*"))


def upload_model(server: RunningServer, body: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}/api/v1/probes", params=QUERY, content=body, timeout=60,
                      headers={**auth_headers(), "Content-Type": "application/octet-stream"})


def warm_up(server: RunningServer) -> None:
    """One small accepted upload first, so the baseline includes the route's own imports."""
    answer = upload_model(server, relu())
    assert answer.status_code in (200, 202), answer.text
    time.sleep(0.5)


def artifacts(server: RunningServer) -> set[Path]:
    return set((server.data_dir / "artifacts").iterdir())


def answer_to_headers_only(server: RunningServer, length: int) -> bytes:
    """What the server answers to a request that declares `length` bytes of body and sends
    none of them: a server that waits for the body answers nothing, and this times out."""
    host, port = server.url.removeprefix("http://").split(":")
    token = auth_headers()["Authorization"]
    head = (f"POST /api/v1/probes?device=board&runtime=onnxruntime&input_shape=1&input_shape=8"
            f" HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head.encode())
        return conn.recv(65536)


def test_a_declared_oversized_body_gets_413_at_once(server: RunningServer) -> None:
    warm_up(server)
    # At once: before a byte of the body is sent.
    assert answer_to_headers_only(server, BODY).startswith(b"HTTP/1.1 413 ")
    stored = artifacts(server)
    body = Body(BODY)
    started = time.monotonic()
    with PeakRSS(server.process.pid) as rss:
        answer = upload(server, body, declare_length=True)
    took = time.monotonic() - started
    print(f"\ndeclared {BODY // MiB} MiB: {answer.status_code} after {took:.2f} s, "
          f"{body.sent / MiB:.0f} MiB sent, server RSS +{rss.growth / MiB:.1f} MiB "
          f"(baseline {rss.baseline / MiB:.0f} MiB)")
    assert answer.status_code == 413, answer.text
    assert "body" in answer.json()["detail"]
    assert rss.growth <= MAX_GROWTH
    assert artifacts(server) == stored and not partial_files(server)
    assert httpx.get(f"{server.url}/api/v1/health", timeout=10).status_code == 200


def test_a_chunked_oversized_body_gets_413_without_being_held(server: RunningServer) -> None:
    warm_up(server)
    stored = artifacts(server)
    body = Body(BODY)
    started = time.monotonic()
    with PeakRSS(server.process.pid) as rss:
        answer = upload(server, body, declare_length=False)
    took = time.monotonic() - started
    print(f"\nchunked {BODY // MiB} MiB: {answer.status_code} after {took:.2f} s, "
          f"{body.sent / MiB:.0f} MiB sent, server RSS +{rss.growth / MiB:.1f} MiB "
          f"(baseline {rss.baseline / MiB:.0f} MiB)")
    assert answer.status_code == 413, answer.text
    assert rss.growth <= MAX_GROWTH
    # The server streamed the body to a file as it came and removed it on refusing.
    assert artifacts(server) == stored and not partial_files(server)
    assert httpx.get(f"{server.url}/api/v1/health", timeout=10).status_code == 200


def test_bodies_that_are_not_onnx_models_are_refused_and_not_stored(
    server: RunningServer,
) -> None:
    warm_up(server)
    stored = artifacts(server)
    listed = httpx.get(f"{server.url}/api/v1/probes", headers=auth_headers(), timeout=30)
    for seed in range(10):  # 10 x 4 MB of random bytes, as the attack sent
        answer = upload_model(server, random.Random(seed).randbytes(4 * MiB))
        assert answer.status_code == 422, answer.text
        assert "not a valid ONNX model" in str(answer.json()["detail"])
    assert artifacts(server) == stored and not partial_files(server)
    again = httpx.get(f"{server.url}/api/v1/probes", headers=auth_headers(), timeout=30)
    assert again.json()["count"] == listed.json()["count"]


def test_uploads_past_the_quota_are_refused_and_collected_with_their_device(
    server: RunningServer,
) -> None:
    warm_up(server)  # the tenant's first model
    held = artifacts(server)
    answers = [upload_model(server, relu(variant)) for variant in range(1, QUOTA_COUNT + 1)]
    assert [a.status_code for a in answers[:-1]] == [202] * (QUOTA_COUNT - 1), answers[0].text
    refused = answers[-1]
    assert refused.status_code == 413, refused.text
    assert f"upload_quota_count {QUOTA_COUNT}" in refused.json()["detail"]
    # The same model again costs nothing more.
    assert upload_model(server, relu(1)).status_code in (200, 202)
    uploaded = artifacts(server) - held
    assert len(uploaded) == QUOTA_COUNT - 1

    # Deleting the device deletes its probes, and the models no probe names any more.
    devices = httpx.get(f"{server.url}/api/v1/devices", headers=auth_headers(),
                        timeout=30).json()["data"]
    device = next(d for d in devices if d["name"] == "board")
    assert httpx.delete(f"{server.url}/api/v1/devices/{device['id']}",
                        headers=auth_headers(), timeout=30).status_code == 204
    assert not {p for p in artifacts(server) if p.suffix == ".onnx"}
    # The quota is free again.
    answer = httpx.post(f"{server.url}/api/v1/devices", headers=auth_headers(),
                        json={"name": "board", "runtimes": ["onnxruntime"]}, timeout=30)
    assert answer.status_code in (200, 201), answer.text
    assert all(upload_model(server, relu(v)).status_code == 202 for v in range(QUOTA_COUNT))
