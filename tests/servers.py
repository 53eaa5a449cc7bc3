"""A real `edgetune serve` process on a free loopback port, for the end-to-end tests.

A module of its own, not `conftest`: test directories have conftests of their own, and
`from conftest import ...` would find whichever was imported first."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edgetune.cli import free_port

#: The admin token of tenant `default` that test servers install (see tests/conftest.py).
TEST_TOKEN = "et_test_admin_0123456789abcdef0123456789abcdef"


def auth_headers(token: str = TEST_TOKEN) -> dict[str, str]:
    """Headers for a raw httpx or TestClient request."""
    return {"Authorization": f"Bearer {token}"}


@dataclass
class RunningServer:
    url: str
    data_dir: Path
    database_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def create_token(server: RunningServer, *, scope: str, tenant: str = "default") -> str:
    """A new token on the server's database, through `edgetune token create` (run in this
    process: a new interpreter per token took seconds on a busy machine)."""
    from typer.testing import CliRunner

    from edgetune.cli import app

    done = CliRunner().invoke(app, ["token", "create", "--tenant", tenant, "--scope", scope,
                                    "--database-url", server.database_url])
    assert done.exit_code == 0, done.output
    return done.stdout.strip()


def start_server(
    data_dir: Path, *, workers: int = 1, timeout: float = 90, env: Mapping[str, str] | None = None
) -> RunningServer:
    """`edgetune serve` on a free port; `env` adds to (or overrides) this process's variables."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = data_dir / "server.log"
    variables = {**os.environ, "EDGETUNE_LATENCY_MIN_TIME_S": "0.05", **(env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgetune", "serve", "--port", str(port), "--data-dir",
             str(data_dir), "--workers", str(workers)],
            stdout=out, stderr=subprocess.STDOUT, env=variables,
        )
    server = RunningServer(
        url=f"http://127.0.0.1:{port}", data_dir=data_dir,
        database_url=f"sqlite:///{data_dir.resolve() / 'edgetune.db'}", process=process, log=log,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/api/v1/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"server did not start within {timeout} s:\n{server.log_tail()}")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


def child_pids(pid: int) -> list[int]:
    """The process's children, from /proc (Linux); none once it is gone."""
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(c) for c in found]


def is_alive(pid: int) -> bool:
    """Whether the process exists and is no zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def until(what: str, check: Callable[[], Any], *, timeout: float = 60,
          on_timeout: Callable[[], str] = lambda: "") -> Any:
    """Poll `check` every 0.1 s until it returns something true, and return that; an
    AssertionError naming `what` (and `on_timeout()`, e.g. a log tail) past `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not {what} within {timeout} s\n{on_timeout()}")
