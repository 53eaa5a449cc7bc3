"""The job repository: submission, listing, cancellation, and the worker's job lease."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Select,
    case,
    cast,
    func,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from edgetune.errors import ConflictError, NotFoundError, StorageError
from edgetune.spec import JobSpec
from edgetune.storage.db import Database
from edgetune.storage.models import Base, Job, JobStatus, Runner
from edgetune.storage.optuna_storage import create_job_study, delete_study
from edgetune.storage.study_store import tenant_running_trials_query

DEFAULT_TENANT = "default"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Repository:
    """Base of the repositories: one database, and transactions whose driver errors come out
    once, as `StorageError`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """A transaction whose driver errors come out once, as `StorageError`."""
        try:
            with self.db.session() as session:
                yield session
        except SQLAlchemyError as e:
            raise StorageError(f"database error: {e}") from e

    def _page(self, query: Select[Any], offset: int, limit: int) -> tuple[list[Any], int]:
        """The rows of the ordered `query` from `offset` on (at most `limit`), and how many rows
        it has in all."""
        counted = query.order_by(None).subquery()
        with self._session() as session:
            count = session.scalar(select(func.count()).select_from(counted)) or 0
            return list(session.scalars(query.offset(offset).limit(limit)).all()), count

    def _insert_unless_taken(self, row: Base) -> bool:
        """Insert `row` in a transaction of its own: False when a constraint refused it, as when
        a racing request inserted its twin first (the caller reads that one back)."""
        try:
            with self._session() as session:
                session.add(row)
        except StorageError as e:
            if isinstance(e.__cause__, IntegrityError):
                return False
            raise
        return True


class JobRepository(Repository):
    """Every read and write of `edgetune_jobs`. Driver errors surface as `StorageError`."""

    def create(self, spec: JobSpec, *, tenant: str = DEFAULT_TENANT,
               idempotency_key: str | None = None, max_active: int | None = None) -> Job:
        """Queue `spec` as a new job of `tenant`. With `idempotency_key`, a submission repeated
        with the same key (a client retrying after a lost answer) returns the job the first one
        made, and a different spec under a used key is a conflict. With `max_active`, a tenant
        that has that many queued and running jobs gets a `ConflictError` (submissions racing
        at the cap may each pass it: the cap bounds a flood, not an exact count)."""
        if idempotency_key is not None:
            earlier = self._by_idempotency_key(tenant, idempotency_key)
            if earlier is not None:
                return _same_submission(earlier, spec)
        if max_active is not None and (active := self.count_active(tenant)) >= max_active:
            raise ConflictError(
                f"tenant {tenant!r} has {active} queued or running jobs, the most "
                f"EDGETUNE_MAX_ACTIVE_JOBS_PER_TENANT ({max_active}) allows: cancel one or wait "
                "for one to end"
            )
        job_id = str(uuid.uuid4())
        runner = (Runner.ASK_TELL if spec.mode == "ask-tell"
                  else Runner.RAY if spec.algorithm.backend == "ray" else Runner.OPTUNA)
        # An ask/tell job runs from the start: its clients ask as soon as it exists.
        status = JobStatus.RUNNING if runner == Runner.ASK_TELL else JobStatus.QUEUED
        now = utcnow()
        job = Job(
            id=job_id,
            tenant=tenant,
            name=spec.name,
            spec=spec,
            status=status.value,
            runner=runner.value,
            study_name=f"edgetune-{spec.name}-{job_id[:8]}",
            created_at=now,
            started_at=now if status == JobStatus.RUNNING else None,
            cancel_requested=0,
            idempotency_key=idempotency_key,
        )
        # The study first: a job row never points at a study that does not exist.
        create_job_study(self.db.url, job.study_name, job_id, spec)
        if not self._insert_unless_taken(job):
            # A racing submission with the same key inserted its job first: answer with that.
            delete_study(self.db.url, job.study_name)
            earlier = self._by_idempotency_key(tenant, idempotency_key or "")
            if earlier is None:
                raise StorageError(f"job {job_id!r} could not be stored")
            return _same_submission(earlier, spec)
        return job

    def _by_idempotency_key(self, tenant: str, key: str) -> Job | None:
        with self._session() as session:
            return session.scalar(
                select(Job).where(Job.tenant == tenant, Job.idempotency_key == key)
            )

    def get(self, job_id: str, *, tenant: str | None = None) -> Job:
        with self._session() as session:
            job = session.get(Job, job_id)
            if job is None or (tenant is not None and job.tenant != tenant):
                raise NotFoundError(f"job {job_id!r} not found")
            return job

    def list(
        self,
        *,
        tenant: str | None = None,
        status: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[Sequence[Job], int]:
        """Jobs newest first, and how many match in all."""
        query = select(Job)
        if tenant is not None:
            query = query.where(Job.tenant == tenant)
        if status is not None:
            query = query.where(Job.status == status)
        return self._page(query.order_by(Job.created_at.desc(), Job.id), offset, limit)

    def summaries(
        self,
        *,
        tenant: str | None = None,
        status: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[Sequence[JobSummaryRow], int]:
        """As `list`, without the specs: a page of listings costs its rows' small columns, not
        their JobSpecs (each up to the spec size cap), whatever the specs hold."""
        # SQLite's JSON functions read text as it is (its CAST to JSON would make it a number);
        # PostgreSQL needs the text column cast to JSON.
        as_json = type_coerce if self.db.engine.dialect.name == "sqlite" else cast
        n_trials = as_json(Job.spec, JSON)[("budget", "n_trials")].as_integer()
        query = select(
            Job.id, Job.name, Job.status, Job.study_name, Job.created_at, Job.started_at,
            Job.finished_at, Job.error, n_trials,
        )
        if tenant is not None:
            query = query.where(Job.tenant == tenant)
        if status is not None:
            query = query.where(Job.status == status)
        query = query.order_by(Job.created_at.desc(), Job.id)
        counted = query.order_by(None).subquery()
        with self._session() as session:
            count = session.scalar(select(func.count()).select_from(counted)) or 0
            rows = session.execute(query.offset(offset).limit(limit)).all()
        return [JobSummaryRow(*row) for row in rows], count

    def count_active(self, tenant: str) -> int:
        """The tenant's queued and running jobs."""
        with self._session() as session:
            return session.scalar(
                select(func.count()).select_from(Job).where(
                    Job.tenant == tenant,
                    Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
            ) or 0

    def orphan_studies(self) -> Sequence[str]:
        """Names of the studies made for a job (they carry its id) whose job row was never
        stored: a server that stopped between the two steps of `create` leaves one. Some may be
        a submission under way this instant: see `reap_orphan_studies`."""
        from edgetune.storage.study_store import orphan_study_names

        return orphan_study_names(self.db.engine)

    def reap_orphan_studies(self, *, grace_s: float = 60.0,
                            sleep: Callable[[float], None] = time.sleep) -> Sequence[str]:
        """Delete the orphan studies that are still orphans `grace_s` later (a submission
        stores its job row milliseconds after its study), and name them."""
        first: set[str] = set(self.orphan_studies())
        if not first:
            return []
        sleep(grace_s)
        return _delete_studies(self.db.url, sorted(first & set(self.orphan_studies())))

    def request_cancel(self, job_id: str, *, tenant: str | None = None) -> Job:
        """Cancel a queued job at once; ask the worker running a running job to stop it.

        Both steps are compare-and-set updates, so a worker claiming the job at the same
        moment either finds it cancelled or is asked to stop it, never neither.
        """
        job = self.get(job_id, tenant=tenant)
        now = utcnow()
        with self._session() as session:
            # A queued job, or an ask/tell one (no worker of ours runs its trials), ends now.
            ends_now = or_(Job.status == JobStatus.QUEUED.value,
                           (Job.status == JobStatus.RUNNING.value)
                           & (Job.runner == Runner.ASK_TELL.value))
            changed = session.execute(
                update(Job)
                .where(Job.id == job.id, ends_now)
                .values(status=JobStatus.CANCELLED.value, finished_at=now, cancel_requested=1,
                        error=case((Job.status == JobStatus.QUEUED.value,
                                    "cancelled before it started"),
                                   else_="cancelled by request"))
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            changed += session.execute(
                update(Job)
                .where(Job.id == job.id, Job.status == JobStatus.RUNNING.value)
                .values(cancel_requested=1)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
        job = self.get(job_id, tenant=tenant)
        if not changed:
            raise ConflictError(f"job {job_id!r} has already {job.status}")
        return job

    # --- the worker's side ---------------------------------------------------------------
    def claim(
        self, owner: str, *, lease_s: float, skip: Collection[str] = (), join: bool = True
    ) -> Job | None:
        """The job `owner` should work on next, except those in `skip`: a queued one, which it
        starts; a running job of the optuna backend, which it joins (workers share those
        through the study) unless `join` is False; a running ray job whose lease expired,
        which it takes over. Tenants with the fewest trials running come first, then queued
        jobs, then the oldest.

        Starting and taking over are compare-and-set UPDATEs, so of two workers racing for one
        job only one wins, on SQLite or PostgreSQL alike.
        """
        now = utcnow()
        exclusive = or_(
            Job.status == JobStatus.QUEUED.value,
            (Job.status == JobStatus.RUNNING.value) & (Job.runner == Runner.RAY.value)
            & (Job.lease_expires_at < now),
        )
        joinable = ((Job.status == JobStatus.RUNNING.value)
                    & (Job.runner == Runner.OPTUNA.value) & (Job.cancel_requested == 0))
        query = select(Job).where(or_(exclusive, joinable) if join else exclusive,
                                  Job.runner != Runner.ASK_TELL.value)
        if skip:
            query = query.where(Job.id.not_in(list(skip)))
        # Tenants with the fewest trials running first, then queued jobs before running ones
        # (which have trials already), then the oldest: a small job of a quiet tenant starts
        # while a big one runs, rather than after it.
        tenant_running = tenant_running_trials_query(Job.tenant)
        started = case((Job.status == JobStatus.QUEUED.value, 0), else_=1)
        with self._session() as session:
            candidates = session.scalars(
                query.order_by(tenant_running, started, Job.created_at).limit(5)
            ).all()
            for job in candidates:
                if job.status == JobStatus.RUNNING.value and job.runner == Runner.OPTUNA.value:
                    return job
                result = session.execute(
                    update(Job)
                    .where(Job.id == job.id, exclusive)
                    .values(
                        status=JobStatus.RUNNING.value,
                        lease_owner=owner,
                        lease_expires_at=now + timedelta(seconds=lease_s),
                        started_at=func.coalesce(Job.started_at, now),
                    )
                    .execution_options(synchronize_session=False)
                )
                session.flush()
                current = session.get(Job, job.id, populate_existing=True)
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    return current
                if (current is not None and current.status == JobStatus.RUNNING.value
                        and current.runner == Runner.OPTUNA.value):
                    return current  # another worker started it a moment ago: join it
        return None

    def renew_lease(self, job_id: str, owner: str, *, lease_s: float) -> bool:
        """Extend `owner`'s lease; False when the job is no longer its to run: another worker
        took a ray job over, or the job ended (every worker of a shared job learns it so)."""
        with self._session() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value,
                       or_(Job.lease_owner == owner, Job.runner == Runner.OPTUNA.value))
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def cancel_requested(self, job_id: str) -> bool:
        with self._session() as session:
            return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    def finish(self, job_id: str, owner: str, status: JobStatus, error: str | None = None) -> None:
        """End the job: a ray job only by the owner of its lease (a no-op once lost), a shared
        or ask/tell job by whichever of its workers or requests sees it end first."""
        with self._session() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value,
                       or_(Job.lease_owner == owner, Job.runner != Runner.RAY.value))
                .values(status=status.value, error=error, finished_at=utcnow(),
                        lease_owner=None, lease_expires_at=None)
                .execution_options(synchronize_session=False)
            )

    def release(self, job_id: str, owner: str) -> None:
        """Give a running ray job back to the queue (its worker is stopping), to resume later.
        A shared job stays running: any worker joins it again."""
        with self._session() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner, Job.runner == Runner.RAY.value,
                       Job.status == JobStatus.RUNNING.value)
                .values(status=JobStatus.QUEUED.value, lease_owner=None, lease_expires_at=None)
                .execution_options(synchronize_session=False)
            )


@dataclass(frozen=True)
class JobSummaryRow:
    """A job as listed: every column but the spec, and the spec's trial budget."""

    id: str
    name: str
    status: str
    study_name: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    n_trials: int


def _delete_studies(url: str, names: Sequence[str]) -> list[str]:
    deleted = []
    for name in names:
        with contextlib.suppress(KeyError):  # another process deleted it first
            delete_study(url, name)
            deleted.append(name)
    return deleted


def _same_submission(job: Job, spec: JobSpec) -> Job:
    if job.spec != spec:
        raise ConflictError(
            f"the Idempotency-Key was used for job {job.id!r} with another spec; send a new key "
            "for a new submission"
        )
    return job
