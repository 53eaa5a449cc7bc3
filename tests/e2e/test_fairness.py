"""Noisy neighbours: one tenant's huge job running does not keep another tenant's small job
waiting. A real `edgetune serve` with one worker of 3 trial slots (one kept for new jobs)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from servers import RunningServer, create_token, start_server, stop_server

from edgetune.client import Client

pytestmark = pytest.mark.slow

#: What tenant A might submit to hog the service: trials that train for minutes each, more of
#: them than will ever run, as many at once as the spec allows.
HUGE = {
    "name": "huge", "seed": 0,
    "trainer": {"name": "tabular-classifier", "dataset": "synthetic", "epochs": 10_000,
                "batch_size": 64, "options": {"n_samples": 2000, "n_features": 20, "threads": 1}},
    "space": {"name": "mlp"},
    "objectives": [{"name": "accuracy", "direction": "maximize"}],
    "algorithm": {"sampler": "random"},
    "budget": {"n_trials": 100_000, "parallelism": 64},
}
SMALL = {
    "name": "small", "seed": 0,
    "trainer": {"name": "function", "dataset": "sphere", "epochs": 1},
    "space": {"name": None, "params": [{"type": "float", "name": "x0", "low": 0, "high": 1}]},
    "objectives": [{"name": "f1"}],
    "algorithm": {"sampler": "random"},
    "budget": {"n_trials": 2, "parallelism": 1},
}
SLOTS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("fairness"), workers=1, env={
        "EDGETUNE_WORKER_MAX_TRIALS": str(SLOTS), "EDGETUNE_WORKER_SPARE_TRIALS": "1",
        "EDGETUNE_POLL_INTERVAL_S": "0.5",
    })
    yield running
    stop_server(running)


def wait_for(what: str, condition: object, timeout: float, server: RunningServer) -> float:
    """Poll `condition` (a callable) until true; the seconds it took."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s\n{server.log_tail()}")
        time.sleep(0.2)
    return time.monotonic() - start


def test_a_small_job_starts_while_another_tenants_huge_job_runs(server: RunningServer) -> None:
    with Client(server.url, token=create_token(server, scope="user", tenant="a")) as a, \
            Client(server.url, token=create_token(server, scope="user", tenant="b")) as b:
        huge = a.submit(HUGE)
        # The worker's first job starts its fork server (torch imported: the slow part).
        wait_for("the huge job runs 2 trials (its slots but the spare)",
                 lambda: a.get(huge.id).progress.running >= SLOTS - 1, 45, server)

        small = b.submit(SMALL)
        wait_for("the small job starts a trial",
                           lambda: b.get(small.id).progress.running
                           + b.get(small.id).progress.complete > 0, 10, server)
        done = b.wait(small.id, timeout=30, poll_interval=0.2)
        assert done.status == "succeeded", done.error
        assert done.progress.complete == 2

        # The huge job ran on all along, within its share: it never took the spare slot.
        seen = a.get(huge.id)
        assert seen.status == "running"
        assert seen.progress.running == SLOTS - 1
        assert seen.progress.complete + seen.progress.failed + seen.progress.pruned == 0

        a.cancel(huge.id)
        ended = a.wait(huge.id, timeout=20, poll_interval=0.2)
        assert ended.status == "cancelled"
        assert ended.progress.running == 0
