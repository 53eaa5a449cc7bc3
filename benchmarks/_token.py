"""The benchmarks' API token: one admin token for the servers they start and the clients they
run, since `edgetune serve` requires a token on every route but `/health`; and the wait for
such a server to answer."""

from __future__ import annotations

import os
import subprocess
import time

import httpx

from edgetune.storage.tokens import new_token


def use_token() -> str:
    """Set `EDGETUNE_TOKEN` (what the SDK and the agent send) and `EDGETUNE_ADMIN_TOKEN` (what
    `edgetune serve` installs at start) for this process and every process it starts; a
    token already in `EDGETUNE_TOKEN` is kept."""
    token = os.environ.setdefault("EDGETUNE_TOKEN", new_token())
    os.environ["EDGETUNE_ADMIN_TOKEN"] = token
    return token


def wait_until_healthy(http: httpx.Client, process: subprocess.Popen[bytes],
                       timeout_s: float = 120) -> None:
    """Poll `/api/v1/health` until it answers 200; RuntimeError if the server exits first or
    does not answer within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if http.get("/api/v1/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError("the server did not start")
        time.sleep(0.3)
