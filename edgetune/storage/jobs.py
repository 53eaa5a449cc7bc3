"""The job repository: submission, listing, cancellation, and the worker's job lease."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from edgetune.errors import ConflictError, NotFoundError, StorageError
from edgetune.spec import JobSpec
from edgetune.storage.db import Database
from edgetune.storage.models import Job, JobStatus
from edgetune.storage.optuna_storage import create_job_study

DEFAULT_TENANT = "default"


def utcnow() -> datetime:
    return datetime.now(UTC)



class JobRepository:
    """Every read and write of `edgetune_jobs`. Driver errors surface as `StorageError`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, spec: JobSpec, *, tenant: str = DEFAULT_TENANT) -> Job:
        job_id = str(uuid.uuid4())
        job = Job(
            id=job_id,
            tenant=tenant,
            name=spec.name,
            spec=spec.model_dump_json(),
            status=JobStatus.QUEUED.value,
            study_name=f"edgetune-{spec.name}-{job_id[:8]}",
            created_at=utcnow(),
            cancel_requested=0,
        )
        # The study first: a job row never points at a study that does not exist.
        create_job_study(self.db.url, job.study_name, job_id, spec)
        with self._session() as session:
            session.add(job)
        return job

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
        with self._session() as session:
            count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(Job.created_at.desc(), Job.id).offset(offset).limit(limit)
            ).all()
            return list(rows), count

    def request_cancel(self, job_id: str, *, tenant: str | None = None) -> Job:
        """Cancel a queued job at once; ask the worker running a running job to stop it.

        Both steps are compare-and-set updates, so a worker claiming the job at the same
        moment either finds it cancelled or is asked to stop it, never neither.
        """
        job = self.get(job_id, tenant=tenant)
        now = utcnow()
        with self._session() as session:
            changed = session.execute(
                update(Job)
                .where(Job.id == job.id, Job.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.CANCELLED.value, finished_at=now, cancel_requested=1,
                        error="cancelled before it started")
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
    def claim(self, owner: str, *, lease_s: float) -> Job | None:
        """Take the oldest queued job, or a running one whose lease expired, for `owner`.

        The claim is a compare-and-set UPDATE, so two workers racing for one job cannot both
        win, on SQLite or PostgreSQL alike.
        """
        now = utcnow()
        claimable = or_(
            Job.status == JobStatus.QUEUED.value,
            (Job.status == JobStatus.RUNNING.value) & (Job.lease_expires_at < now),
        )
        with self._session() as session:
            candidates = session.scalars(
                select(Job.id).where(claimable).order_by(Job.created_at).limit(5)
            ).all()
            for job_id in candidates:
                result = session.execute(
                    update(Job)
                    .where(Job.id == job_id, claimable)
                    .values(
                        status=JobStatus.RUNNING.value,
                        lease_owner=owner,
                        lease_expires_at=now + timedelta(seconds=lease_s),
                        started_at=func.coalesce(Job.started_at, now),
                    )
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    session.flush()
                    job = session.get(Job, job_id, populate_existing=True)
                    return job
        return None

    def renew_lease(self, job_id: str, owner: str, *, lease_s: float) -> bool:
        """Extend `owner`'s lease; False when the lease was lost (another worker took it)."""
        with self._session() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner,
                       Job.status == JobStatus.RUNNING.value)
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def cancel_requested(self, job_id: str) -> bool:
        with self._session() as session:
            return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    def finish(self, job_id: str, owner: str, status: JobStatus, error: str | None = None) -> None:
        """End the job `owner` holds; a no-op when the lease was lost meanwhile."""
        with self._session() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner)
                .values(status=status.value, error=error, finished_at=utcnow(),
                        lease_owner=None, lease_expires_at=None)
                .execution_options(synchronize_session=False)
            )

    def release(self, job_id: str, owner: str) -> None:
        """Give a running job back to the queue (its worker is stopping), to resume later."""
        with self._session() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner,
                       Job.status == JobStatus.RUNNING.value)
                .values(status=JobStatus.QUEUED.value, lease_owner=None, lease_expires_at=None)
                .execution_options(synchronize_session=False)
            )

    # --- internals -------------------------------------------------------------------------
    @contextmanager
    def _session(self) -> Iterator[Session]:
        """A transaction whose driver errors come out once, as `StorageError`."""
        try:
            with self.db.session() as session:
                yield session
        except SQLAlchemyError as e:
            raise StorageError(f"database error: {e}") from e
