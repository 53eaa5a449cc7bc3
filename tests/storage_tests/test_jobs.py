"""The job repository's contract, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import time

import optuna
import pytest
import sqlalchemy as sa
from racing import race

from edgetune.errors import ConflictError, NotFoundError, StorageError
from edgetune.spec import JobSpec
from edgetune.storage import JobRepository, JobStatus, Runner, migrations, open_database


@pytest.fixture
def jobs(database_url: str):
    db = open_database(database_url)
    yield JobRepository(db)
    db.dispose()


def spec(name: str = "job", **kw) -> JobSpec:
    return JobSpec.model_validate({"name": name, **kw})


def ray_spec(name: str = "job") -> JobSpec:
    """A job one worker drives alone (through Ray), under a lease."""
    return spec(name, algorithm={"backend": "ray", "sampler": "tpe"})


def test_migrations_are_idempotent_and_at_head(jobs: JobRepository) -> None:
    migrations.upgrade(jobs.db.engine)
    assert migrations.current_revision(jobs.db.engine) == migrations.head_revision()
    tables = set(sa.inspect(jobs.db.engine).get_table_names())
    assert {"edgetune_jobs", "edgetune_alembic_version", "studies", "trials"} <= tables


def test_a_database_newer_than_the_code_is_refused(jobs: JobRepository) -> None:
    with jobs.db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE edgetune_alembic_version SET version_num = '9999'"))
    with pytest.raises(StorageError, match="'9999', which this edgetune does not know"):
        migrations.upgrade(jobs.db.engine)


def test_create_makes_the_study_with_directions_and_metric_names(jobs: JobRepository) -> None:
    job = jobs.create(spec(objectives=[{"name": "accuracy"}, {"name": "latency_ms"}]))
    assert job.status == JobStatus.QUEUED and job.created_at.tzinfo is not None
    study = optuna.load_study(study_name=job.study_name, storage=jobs.db.url)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE,
                                optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["accuracy", "latency_ms@local"]
    assert jobs.get(job.id).spec == job.spec
    assert isinstance(job.spec, JobSpec)


def test_list_is_newest_first_filtered_and_paginated(jobs: JobRepository) -> None:
    made = [jobs.create(spec(f"j{i}")) for i in range(5)]
    jobs.request_cancel(made[0].id)
    page, count = jobs.list(offset=1, limit=2)
    assert count == 5 and [j.name for j in page] == ["j3", "j2"]
    cancelled, n = jobs.list(status="cancelled")
    assert n == 1 and cancelled[0].id == made[0].id


def test_unknown_job_is_not_found(jobs: JobRepository) -> None:
    with pytest.raises(NotFoundError):
        jobs.get("nope")
    with pytest.raises(NotFoundError):
        jobs.request_cancel("nope")


def test_only_one_of_many_racing_workers_claims_a_ray_job(jobs: JobRepository) -> None:
    job = jobs.create(ray_spec())
    claims = race(lambda i: jobs.claim(f"w{i}", lease_s=60))
    winners = [claimed.lease_owner or "" for claimed in claims if claimed is not None]
    assert len(winners) == 1
    got = jobs.get(job.id)
    assert got.status == JobStatus.RUNNING and got.lease_owner == winners[0]
    assert got.started_at is not None


def test_an_expired_lease_is_claimed_again_and_the_old_owner_loses(jobs: JobRepository) -> None:
    job = jobs.create(ray_spec())
    assert jobs.claim("old", lease_s=0.2) is not None
    assert jobs.claim("new", lease_s=60) is None
    time.sleep(0.3)
    taken = jobs.claim("new", lease_s=60)
    assert taken is not None and taken.id == job.id and taken.lease_owner == "new"
    assert not jobs.renew_lease(job.id, "old", lease_s=60)
    assert jobs.renew_lease(job.id, "new", lease_s=60)
    jobs.finish(job.id, "old", JobStatus.SUCCEEDED)  # a lost lease changes nothing
    assert jobs.get(job.id).status == JobStatus.RUNNING


def test_release_requeues_and_finish_records_the_outcome(jobs: JobRepository) -> None:
    job = jobs.create(ray_spec())
    jobs.claim("w", lease_s=60)
    jobs.release(job.id, "w")
    assert jobs.get(job.id).status == JobStatus.QUEUED
    jobs.claim("w2", lease_s=60)
    jobs.finish(job.id, "w2", JobStatus.FAILED, "all 3 trials failed")
    done = jobs.get(job.id)
    assert done.status == JobStatus.FAILED and done.error == "all 3 trials failed"
    assert done.finished_at is not None and done.lease_owner is None


def test_racing_workers_all_join_a_shared_job_which_one_of_them_started(
    jobs: JobRepository,
) -> None:
    job = jobs.create(spec())
    assert job.runner == Runner.OPTUNA
    claims = race(lambda i: jobs.claim(f"w{i}", lease_s=60))
    assert [claimed.id if claimed is not None else None for claimed in claims] == [job.id] * 8
    running = jobs.get(job.id)
    assert running.status == JobStatus.RUNNING and running.started_at is not None
    # A worker passes over a job it has just found nothing to do in.
    assert jobs.claim("w9", lease_s=60, skip={job.id}) is None
    # Every worker keeps it alive; none hands it back to the queue; any of them ends it.
    assert jobs.renew_lease(job.id, "w3", lease_s=60)
    jobs.release(job.id, "w3")
    assert jobs.get(job.id).status == JobStatus.RUNNING
    jobs.finish(job.id, "w5", JobStatus.SUCCEEDED)
    jobs.finish(job.id, "w6", JobStatus.FAILED, "too late")  # the first to end it wins
    done = jobs.get(job.id)
    assert done.status == JobStatus.SUCCEEDED and done.error is None
    assert not jobs.renew_lease(job.id, "w3", lease_s=60)  # its workers learn it ended
    assert jobs.claim("w9", lease_s=60) is None


def test_cancel_queued_at_once_running_by_request_finished_refused(jobs: JobRepository) -> None:
    queued = jobs.create(spec("q"))
    assert jobs.request_cancel(queued.id).status == JobStatus.CANCELLED
    with pytest.raises(ConflictError, match="already cancelled"):
        jobs.request_cancel(queued.id)
    running = jobs.create(spec("r"))
    jobs.claim("w", lease_s=60)
    assert not jobs.cancel_requested(running.id)
    assert jobs.request_cancel(running.id).status == JobStatus.RUNNING
    assert jobs.cancel_requested(running.id)


def test_optuna_tables_newer_than_the_installed_optuna_are_refused(database_url: str) -> None:
    open_database(database_url).dispose()
    engine = sa.create_engine(open_database(database_url, migrate=False).url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'v99.0.0.z'")
    engine.dispose()
    with pytest.raises(StorageError, match=r"Optuna tables are at schema 'v99\.0\.0\.z', newer"):
        open_database(database_url)
