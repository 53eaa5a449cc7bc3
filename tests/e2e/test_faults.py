"""Faults survived: a worker, or the whole server, killed with SIGKILL in the middle of a job.

Real `edgetune serve` processes on loopback; the trials are a small tabular classifier that
trains for a few seconds, so that a kill lands while trials run. Nothing here shortens the
service's lease or heartbeat: the times asserted are those of a default deployment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from servers import RunningServer, start_server, stop_server

from edgetune.cli import free_port
from edgetune.client import Client
from edgetune.schemas import JobPublic, TrialPublic

pytestmark = pytest.mark.slow

T = TypeVar("T")
INFRA = "edgetune:infra_failure"
#: Each of a job's workers runs one trial at a time, so that two workers share a job.
ONE_TRIAL_EACH = {"EDGETUNE_WORKER_TRIALS": "1", "EDGETUNE_POLL_INTERVAL_S": "0.5"}


def slow_job(name: str, *, n_trials: int, space: dict, sampler: str = "random",
             epochs: int = 20) -> dict:
    """Trials of about 0.1 s per epoch on 2 CPU cores (20,000 rows), and a few seconds to
    start, load and export."""
    return {
        "name": name, "seed": 0,
        "trainer": {"name": "tabular-classifier", "dataset": "synthetic", "epochs": epochs,
                    "batch_size": 64,
                    "options": {"n_samples": 20000, "n_features": 20, "threads": 1}},
        "space": space,
        "objectives": [{"name": "accuracy", "direction": "maximize"}],
        "algorithm": {"sampler": sampler},
        "budget": {"n_trials": n_trials, "parallelism": 2},
    }


# --- processes, read from /proc (psutil is not a dependency) ---------------------------------
def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process; None once it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = raw.rsplit(")", 1)[1].split()[:2]
    return None if state in ("Z", "X") else (state, int(ppid))


def alive(pid: int) -> bool:
    return _stat(pid) is not None


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None and stat[1] == pid:
            found.append(int(entry))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def worker_pids(server_pid: int) -> list[int]:
    """The `edgetune worker` children of a `serve` process."""
    return [p for p in children(server_pid) if "worker" in cmdline(p)]


def ancestor_in(pid: int, candidates: set[int]) -> int | None:
    """The first of `candidates` on the way from `pid` up to init."""
    for _ in range(16):
        if pid in candidates:
            return pid
        stat = _stat(pid)
        if stat is None or stat[1] <= 1:
            return None
        pid = stat[1]
    return None


def wait_until(what: str, probe: Callable[[], T | None], timeout: float,
               interval: float = 0.25, log: Callable[[], str] = lambda: "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{log()}")
        time.sleep(interval)


def all_trials(client: Client, job_id: str) -> list[TrialPublic]:
    page = client.trials(job_id, limit=500)
    assert page.count == len(page.data)
    return page.data


def assert_done_exactly(job: JobPublic, trials: list[TrialPublic], n_trials: int) -> None:
    """The job succeeded with exactly `n_trials` complete trials, and every other trial is an
    infrastructure failure (counted as retried, not as failed)."""
    assert job.status == "succeeded", job.error
    states = Counter(t.state for t in trials)
    assert states["complete"] == n_trials, states
    assert states["running"] == states["waiting"] == states["pruned"] == 0, states
    failed = [t for t in trials if t.state == "fail"]
    assert all(t.user_attrs.get(INFRA) is True for t in failed), [t.error for t in failed]
    p = job.progress
    assert (p.complete, p.failed, p.running, p.pruned) == (n_trials, 0, 0, 0), p
    assert p.retried == len(failed)
    assert len({t.number for t in trials}) == len(trials)


# --- 1. one of two workers killed --------------------------------------------------------------
@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[RunningServer]:
    server = start_server(tmp_path / "data", workers=2, env=ONE_TRIAL_EACH)
    yield server
    stop_server(server)


def test_a_killed_workers_trial_fails_as_infrastructure_and_runs_again(
    two_workers: RunningServer,
) -> None:
    server = two_workers
    n_trials = 3  # two running at the kill, then the third and the killed one asked again
    workers = set(wait_until("two workers", lambda: (w := worker_pids(server.process.pid))
                             and len(w) == 2 and w, 60))
    space = {"name": None, "params": [
        {"type": "categorical", "name": "width", "choices": [32, 64]},
        {"type": "float", "name": "lr", "low": 1e-3, "high": 3e-2, "log": True},
    ]}
    with Client(server.url) as client:
        # 60 epochs: a trial trains for several seconds after the kill.
        job = client.submit(slow_job("kill-one-worker", n_trials=n_trials, space=space,
                                     epochs=60))

        def running_with_owner() -> dict[int, tuple[TrialPublic, int]] | None:
            running = client.trials(job.id, state="running").data
            owned = {}
            for t in running:
                pid = t.user_attrs.get("pid")
                owner = ancestor_in(pid, workers) if isinstance(pid, int) else None
                if owner is not None:
                    owned[t.number] = (t, owner)
            owners = {owner for _, owner in owned.values()}
            return owned if len(owned) == 2 and len(owners) == 2 else None

        owned = wait_until("two trials running, one in each worker", running_with_owner, 120,
                           log=server.log_tail)
        time.sleep(1.0)  # well into training (the first trial's child imports torch first)
        victim_number, (victim, victim_worker) = min(owned.items())
        trial_pid = victim.user_attrs["pid"]
        assert client.get_trial(job.id, victim_number).state == "running"
        os.kill(victim_worker, signal.SIGKILL)
        killed_at = time.monotonic()
        numbers_before = {t.number for t in all_trials(client, job.id)}
        # Its trial's process does not train on as an orphan beside the trial run again.
        wait_until("the killed worker's trial process to exit", lambda: not alive(trial_pid),
                   3, interval=0.05)
        orphan_s = time.monotonic() - killed_at

        def requeued() -> float | None:
            killed = client.get_trial(job.id, victim_number)
            if killed.state == "running":
                return None
            assert killed.state == "fail", killed.state
            assert killed.user_attrs.get(INFRA) is True and killed.error, killed.user_attrs
            fresh = [t for t in all_trials(client, job.id) if t.number not in numbers_before]
            return time.monotonic() - killed_at if fresh else None

        requeue_s = wait_until("the killed trial failed and another asked", requeued, 60,
                               log=server.log_tail)
        print(f"\nkilled trial {victim_number}: its process gone after {orphan_s:.2f} s; "
              f"failed and re-queued after {requeue_s:.1f} s")
        # Optuna's grace period (4 heartbeats of 5 s) and a heartbeat round of the worker that
        # fails it, with room for a machine that runs another test beside this one.
        assert requeue_s <= 45

        job = client.wait(job.id, timeout=240, poll_interval=0.5)
        trials = all_trials(client, job.id)
        assert_done_exactly(job, trials, n_trials)
        # Only the killed worker's trial failed, once: the other worker's went on.
        assert [t.number for t in trials if t.state == "fail"] == [victim_number]
        assert server.process.poll() is None
        # A new worker took the killed one's place.
        assert len(worker_pids(server.process.pid)) == 2


# --- 2. the whole server killed, then started again on its data ---------------------------------
@contextmanager
def serve_session(data_dir: Path, env: dict[str, str]) -> Iterator[RunningServer]:
    """`edgetune serve` in a session (process group) of its own, so that a test can kill it
    with all its workers and their trials at once, like a machine losing power."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = data_dir / f"server-{port}.log"
    variables = {**os.environ, "EDGETUNE_LATENCY_MIN_TIME_S": "0.05", **env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgetune", "serve", "--port", str(port), "--data-dir",
             str(data_dir), "--workers", "2"],
            stdout=out, stderr=subprocess.STDOUT, env=variables, start_new_session=True,
        )
    server = RunningServer(url=f"http://127.0.0.1:{port}", data_dir=data_dir,
                           database_url=f"sqlite:///{data_dir.resolve() / 'edgetune.db'}",
                           process=process, log=log)
    try:
        def healthy() -> bool:
            assert process.poll() is None, server.log_tail()
            try:
                return httpx.get(f"{server.url}/api/v1/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until("the server to answer", healthy, 90, log=server.log_tail)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=40)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
        process.wait(timeout=10)


def test_a_killed_server_started_again_finishes_the_job_without_repeating_a_grid_point(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    space = {"name": None, "params": [
        {"type": "categorical", "name": "width", "choices": [16, 48]},
        {"type": "categorical", "name": "lr", "choices": [0.001, 0.01, 0.03]},
    ]}
    # Six points: two done and two running at the kill, two never started.
    grid = {(w, lr) for w in (16, 48) for lr in (0.001, 0.01, 0.03)}
    n_trials = len(grid)
    with serve_session(data_dir, ONE_TRIAL_EACH) as first, Client(first.url) as client:
        job = client.submit(slow_job("kill-server", n_trials=n_trials, space=space,
                                     sampler="grid"))

        def mid_job() -> list[TrialPublic] | None:
            trials = all_trials(client, job.id)
            states = Counter(t.state for t in trials)
            return trials if states["complete"] >= 2 and states["running"] == 2 else None

        at_kill = wait_until("two trials done and two running", mid_job, 180,
                             log=first.log_tail)
        time.sleep(1.0)
        group = [first.process.pid, *children(first.process.pid)]
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait(timeout=10)
        wait_until("every process of the server to die", lambda: not any(map(alive, group)), 10)
    running_at_kill = {t.number for t in at_kill if t.state == "running"}

    with serve_session(data_dir, ONE_TRIAL_EACH) as second, Client(second.url) as client:
        assert client.get(job.id).status == "running"
        job = client.wait(job.id, timeout=300, poll_interval=0.5)
        trials = all_trials(client, job.id)
        assert_done_exactly(job, trials, n_trials)
        # The trials the kill interrupted failed as infrastructure failures and ran again.
        assert {t.number for t in trials if t.state == "fail"} == running_at_kill
        points = [(t.params["width"], t.params["lr"]) for t in trials if t.state == "complete"]
        assert len(points) == len(set(points)) == n_trials
        assert set(points) == grid
