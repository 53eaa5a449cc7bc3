"""Many clients on one ask/tell job at once, through a real server with two API processes:
on SQLite and on PostgreSQL, every trial is asked once, told once, and no request fails.

16 threads each run 10 trials (ask, then tell) of one job whose parallelism lets all of them
run at once. Every answer must be 200: no 5xx, no 409, no "database is locked".
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from servers import auth_headers

from edgetune.cli import free_port

pytestmark = pytest.mark.slow

CLIENTS = 16
TRIALS_EACH = 10
@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    """`serve --api-workers 2 --workers 0`: ask/tell needs no worker; two API processes share
    the job through its database lock."""
    port = free_port()
    log = tmp_path / "server.log"
    # One token makes every request here: the per-token rate limit would answer 429s, which
    # are not what this test is about.
    env = {**os.environ, "EDGETUNE_RATE_LIMIT_PER_S": "0"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgetune", "serve", "--port", str(port), "--data-dir",
             str(tmp_path / "data"), "--database-url", database_url, "--workers", "0",
             "--api-workers", "2", "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    running = Server(url=f"http://127.0.0.1:{port}", process=process, log=log)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, running.log_tail()
            assert time.monotonic() < deadline, f"the server did not start\n{running.log_tail()}"
            try:
                if httpx.get(f"{running.url}/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass
class Tally:
    """What the clients saw, shared by their threads."""

    statuses: Counter[int] = field(default_factory=Counter)
    told: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, what: str, response: httpx.Response) -> bool:
        with self.lock:
            self.statuses[response.status_code] += 1
            if response.status_code != 200 or "locked" in response.text.lower():
                self.problems.append(f"{what}: {response.status_code} {response.text[:300]}")
                return False
        return True


def run_client(url: str, job_id: str, index: int, tally: Tally, start: threading.Barrier) -> None:
    client_id = f"client-{index}"
    base = f"{url}/api/v1/jobs/{job_id}"
    with httpx.Client(headers=auth_headers(), timeout=60) as http:
        start.wait(timeout=30)
        for _ in range(TRIALS_EACH):
            try:
                asked = http.post(f"{base}/trials:ask", json={"client_id": client_id})
                if not tally.answer(f"{client_id} ask", asked):
                    return
                trial = asked.json()
                assert trial["resumed"] is False, trial  # the last trial was told
                x = float(trial["params"]["x"])
                told = http.post(f"{base}/trials/{trial['number']}:tell",
                                 json={"values": {"f1": x, "f2": 1 - x}})
                if not tally.answer(f"{client_id} tell {trial['number']}", told):
                    return
                assert told.json()["state"] == "complete", told.text
            except (httpx.HTTPError, AssertionError) as e:
                with tally.lock:
                    tally.problems.append(f"{client_id}: {type(e).__name__}: {e}")
                return
            with tally.lock:
                tally.told.append(int(trial["number"]))


def test_sixteen_clients_run_160_trials_of_one_job(server: Server, database_url: str) -> None:
    n_trials = CLIENTS * TRIALS_EACH
    spec = {
        "name": "ask-tell-crowd", "seed": 0, "mode": "ask-tell",
        "space": {"name": None, "params": [
            {"type": "float", "name": "x", "low": 0.0, "high": 1.0},
            {"type": "categorical", "name": "act", "choices": ["relu", "gelu"]},
        ]},
        "objectives": [{"name": "f1"}, {"name": "f2"}],
        "algorithm": {"sampler": "random"},
        "budget": {"n_trials": n_trials, "parallelism": CLIENTS},
    }
    with httpx.Client(base_url=f"{server.url}/api/v1", headers=auth_headers(),
                      timeout=60) as http:
        submitted = http.post("/jobs", json=spec)
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]

        tally = Tally()
        start = threading.Barrier(CLIENTS)
        threads = [threading.Thread(target=run_client,
                                    args=(server.url, job_id, i, tally, start), daemon=True)
                   for i in range(CLIENTS)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        took = time.monotonic() - began
        kind = database_url.split(":", 1)[0].split("+")[0]
        print(f"\n{kind}: {len(tally.told)} trials by {CLIENTS} clients in {took:.1f} s "
              f"({len(tally.told) / took:.0f} trials/s); answers {dict(tally.statuses)}")
        assert not any(thread.is_alive() for thread in threads), "a client hung"

        five_xx = sum(n for status, n in tally.statuses.items() if status >= 500)
        assert five_xx == 0 and not tally.problems, (tally.problems[:10], server.log_tail())
        assert tally.statuses == Counter({200: 2 * n_trials})
        # Every trial number was handed out once, and all of them were told.
        assert sorted(tally.told) == list(range(n_trials))

        job = http.get(f"/jobs/{job_id}").json()
        assert job["status"] == "succeeded", job
        assert {k: job["progress"][k] for k in ("complete", "failed", "running", "retried")} == {
            "complete": n_trials, "failed": 0, "running": 0, "retried": 0}
        numbers = []
        for offset in range(0, n_trials + 1, 500):
            page = http.get(f"/jobs/{job_id}/trials", params={"offset": offset, "limit": 500})
            assert page.status_code == 200, page.text
            assert page.json()["count"] == n_trials
            numbers += [t["number"] for t in page.json()["data"]]
            assert all(t["state"] == "complete" for t in page.json()["data"])
        assert sorted(numbers) == list(range(n_trials))
        # One more ask finds the job ended.
        assert http.post(f"/jobs/{job_id}/trials:ask",
                         json={"client_id": "late"}).status_code == 409
    assert "database is locked" not in server.log.read_text()
