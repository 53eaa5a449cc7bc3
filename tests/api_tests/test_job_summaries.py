"""What the bounded listing and the caps read from storage, on SQLite and PostgreSQL: summaries
without specs (the trial budget read from the stored spec in SQL), active jobs per tenant, and
the studies a job never came for."""

from __future__ import annotations

import pytest

from edgetune.errors import ConflictError
from edgetune.spec import JobSpec
from edgetune.storage import JobRepository, open_database
from edgetune.storage.optuna_storage import create_job_study


@pytest.fixture
def jobs(database_url: str):
    db = open_database(database_url)
    yield JobRepository(db)
    db.dispose()


def test_summaries_page_without_specs(jobs: JobRepository) -> None:
    made = [jobs.create(JobSpec(name=f"j{i}", budget={"n_trials": 3 + i}), tenant="t")
            for i in range(3)]
    jobs.create(JobSpec(name="other"), tenant="u")
    rows, count = jobs.summaries(tenant="t", offset=1, limit=1)
    assert count == 3 and [r.id for r in rows] == [made[1].id]
    assert rows[0].n_trials == 4 and rows[0].status == "queued"
    assert not hasattr(rows[0], "spec")
    cancelled = jobs.request_cancel(made[0].id)
    rows, count = jobs.summaries(tenant="t", status="cancelled")
    assert count == 1 and rows[0].id == cancelled.id and rows[0].error


def test_active_jobs_per_tenant(jobs: JobRepository) -> None:
    first = jobs.create(JobSpec(name="a"), tenant="t", max_active=2)
    jobs.create(JobSpec(name="b"), tenant="t", max_active=2, idempotency_key="k")
    with pytest.raises(ConflictError, match="2 queued or running jobs"):
        jobs.create(JobSpec(name="c"), tenant="t", max_active=2)
    # The same submission again is its job, not a new one; other tenants are not counted.
    assert jobs.create(JobSpec(name="b"), tenant="t", max_active=2, idempotency_key="k")
    jobs.create(JobSpec(name="c"), tenant="u", max_active=2)
    jobs.request_cancel(first.id)
    assert jobs.count_active("t") == 1
    jobs.create(JobSpec(name="c"), tenant="t", max_active=2)


def test_orphan_studies_are_reaped_after_the_grace(jobs: JobRepository) -> None:
    kept = jobs.create(JobSpec(name="kept"))
    create_job_study(jobs.db.url, "edgetune-orphan-0000", "no-such-job", JobSpec(name="orphan"))
    assert jobs.orphan_studies() == ["edgetune-orphan-0000"]
    waited: list[float] = []
    assert jobs.reap_orphan_studies(grace_s=5, sleep=waited.append) == ["edgetune-orphan-0000"]
    assert waited == [5] and jobs.orphan_studies() == []
    assert jobs.get(kept.id).study_name  # the job's own study is not an orphan
    assert jobs.reap_orphan_studies(grace_s=5, sleep=waited.append) == []
    assert waited == [5]  # nothing found: no wait
