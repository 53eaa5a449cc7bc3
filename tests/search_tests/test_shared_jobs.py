"""Many workers share one job through PostgreSQL: real `edgetune worker` processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from edgetune.spec import JobSpec
from edgetune.storage import JobRepository, JobStatus, open_database

pytestmark = pytest.mark.slow

STARTED = re.compile(r"job \S+: trial (\d+) started")


def start_workers(n: int, url: str, tmp: Path) -> list[tuple[subprocess.Popen[bytes], Path]]:
    env = {**os.environ, "EDGETUNE_WORKER_TRIALS": "1", "EDGETUNE_POLL_INTERVAL_S": "0.2",
           "EDGETUNE_LATENCY_MIN_TIME_S": "0"}
    workers = []
    for i in range(n):
        log = tmp / f"worker-{i}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "edgetune", "worker", "--database-url", url,
                 "--data-dir", str(tmp / "data")],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )
        workers.append((process, log))
    deadline = time.monotonic() + 120
    while not all("watching" in log.read_text() for _, log in workers):
        assert time.monotonic() < deadline, "workers did not start"
        assert all(p.poll() is None for p, _ in workers), [log.read_text() for _, log in workers]
        time.sleep(0.2)
    return workers


def test_four_workers_share_one_job_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    db = open_database(postgres_url)
    jobs = JobRepository(db)
    workers = start_workers(4, postgres_url, tmp_path)
    try:
        spec = JobSpec.model_validate({
            "name": "shared", "seed": 0,
            "trainer": {"name": "function", "dataset": "sphere", "epochs": 2},
            "space": {"name": None, "params": [
                {"type": "float", "name": f"x{i}", "low": 0, "high": 1} for i in range(4)]},
            "objectives": [{"name": "f1"}],
            "algorithm": {"sampler": "random"},
            "budget": {"n_trials": 40, "parallelism": 4},
        })
        job = jobs.create(spec)
        deadline = time.monotonic() + 600
        while not JobStatus(jobs.get(job.id).status).finished:
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.5)
        assert jobs.get(job.id).status == JobStatus.SUCCEEDED
    finally:
        for process, _ in workers:
            process.terminate()
        for process, _ in workers:
            process.wait(timeout=60)
        db.dispose()

    trials = optuna.load_study(study_name=job.study_name, storage=postgres_url).get_trials()
    assert sorted(t.number for t in trials) == list(range(40))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # Every trial was started by exactly one worker, once; every worker took some.
    started = [[int(n) for n in STARTED.findall(log.read_text())] for _, log in workers]
    assert Counter(n for per_worker in started for n in per_worker) == Counter(range(40))
    assert all(per_worker for per_worker in started), [len(s) for s in started]
