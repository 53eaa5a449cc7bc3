"""The worker's own rules around a job's run (the runs themselves: test_optuna_backend.py,
test_shared_jobs.py and the end-to-end tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgetune.errors import StorageError
from edgetune.search.worker import Worker
from edgetune.settings import Settings
from edgetune.spec import JobSpec
from edgetune.storage import JobStatus

SPEC = {
    "name": "sphere", "seed": 0,
    "trainer": {"name": "function", "dataset": "sphere", "epochs": 1},
    "space": {"name": None, "params": [{"type": "float", "name": "x0", "low": 0, "high": 1}]},
    "objectives": [{"name": "f1"}],
    "budget": {"n_trials": 2},
}


class _DatabaseGone:
    def run(self, *_: Any) -> Any:
        raise StorageError("database unavailable: connection refused")


def test_a_database_outage_mid_job_hands_the_job_back_instead_of_failing_it(
    fresh_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = Worker(Settings(data_dir=fresh_data_dir))
    try:
        job = worker.jobs.create(JobSpec.model_validate(SPEC))
        claimed = worker.jobs.claim(worker.name, lease_s=60)
        assert claimed is not None and claimed.id == job.id
        monkeypatch.setattr(worker, "backend_for", lambda _spec: _DatabaseGone())
        outcome = worker.run_job(claimed)
        assert outcome.status is None and "database unavailable" in (outcome.error or "")
        # Still running: any worker joins it again once the database answers.
        assert worker.jobs.get(job.id).status == JobStatus.RUNNING
    finally:
        worker.db.dispose()


@pytest.mark.parametrize(("settings", "expected"), [
    ({"worker_max_trials": 3}, 3),  # a local Ray runs its trials on this machine
    ({"worker_max_trials": 3, "tenant_max_trials": 2}, 2),
    ({"worker_max_trials": 3, "ray_address": "ray://head:10001"}, 64),  # the tenant's bound
    ({"worker_max_trials": 3, "ray_address": "ray://head:10001", "tenant_max_trials": None},
     None),  # a cluster's trials, no tenant bound: the job's parallelism
])
def test_a_ray_jobs_trials_at_once_are_bounded_like_the_workers_processes(
    fresh_data_dir: Path, settings: dict[str, Any], expected: int | None
) -> None:
    worker = Worker(Settings(data_dir=fresh_data_dir, **settings))
    try:
        assert worker._ray_max_trials() == expected
    finally:
        worker.db.dispose()
