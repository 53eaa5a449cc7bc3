"""A worker: takes jobs from the database (starting queued ones, joining shared running ones)
and runs their trials."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from types import FrameType

from edgetune.devices import MeasureConfig
from edgetune.errors import StorageError
from edgetune.search.backends import Backend, JobOutcome, OptunaBackend
from edgetune.settings import Settings
from edgetune.spec import JobSpec
from edgetune.storage import Job, JobRepository, JobStatus, open_database

logger = logging.getLogger(__name__)

#: The longest a worker goes between renewing its job's lease and its trials' heartbeats. A
#: trial silent for 4 heartbeats counts as dead (`optuna_storage`): a killed worker's trials
#: are then failed and run again within about 25 s, however long the job's lease is (a quarter
#: of the default 60 s lease would leave them for over a minute).
MAX_HEARTBEAT_S = 5.0


class _Control:
    """The backend's view of the worker for one job (see `JobControl`)."""

    def __init__(self, worker: Worker, job: Job) -> None:
        self.worker = worker
        self.job = job

    def heartbeat(self) -> bool:
        try:
            return self.worker.jobs.renew_lease(
                self.job.id, self.worker.name, lease_s=self.worker.settings.job_lease_s
            )
        except StorageError:
            logger.warning("could not renew the lease of job %s; will retry", self.job.id)
            return True

    def cancel_requested(self) -> bool:
        try:
            return self.worker.jobs.cancel_requested(self.job.id)
        except StorageError:
            return False

    def should_stop(self) -> bool:
        return self.worker.stopping.is_set() or self.worker.parent_gone()


class Worker:
    """Claims one job at a time and runs it to its end, until asked to stop."""

    def __init__(self, settings: Settings, *, parent_pid: int | None = None) -> None:
        self.settings = settings
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self.parent_pid = parent_pid
        self.db = open_database(settings.url)
        self.jobs = JobRepository(self.db)
        settings.artifact_dir.mkdir(parents=True, exist_ok=True)
        self.latency = MeasureConfig(
            threads=settings.latency_threads,
            warmup=settings.latency_warmup,
            min_repeats=settings.latency_min_repeats,
            min_time_s=settings.latency_min_time_s,
            timeout_s=settings.latency_timeout_s,
            memory_bytes=settings.latency_memory_bytes,
        )
        self.backend = OptunaBackend(
            storage_url=self.db.url,
            artifact_dir=str(settings.artifact_dir),
            latency=self.latency,
            poll_interval_s=min(0.5, settings.poll_interval_s),
            heartbeat_interval_s=min(settings.job_lease_s / 4, MAX_HEARTBEAT_S),
            max_running=settings.worker_trials,
            probe_timeout_s=settings.probe_timeout_s,
        )
        self._ray: Backend | None = None

    def backend_for(self, spec: JobSpec) -> Backend:
        """The backend a job names; Ray is imported (and started) with its first job."""
        if spec.algorithm.backend == "optuna":
            return self.backend
        if self._ray is None:
            from edgetune.search.backends.ray import RayBackend

            self._ray = RayBackend(
                storage_url=self.db.url,
                artifact_dir=str(self.settings.artifact_dir),
                latency=self.latency,
                ray_address=self.settings.ray_address,
                heartbeat_interval_s=self.settings.job_lease_s / 4,
                probe_timeout_s=self.settings.probe_timeout_s,
            )
        return self._ray

    def parent_gone(self) -> bool:
        # `serve` starts workers as children; when it dies, they must not run on unsupervised.
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            logger.info("worker %s: %s received, stopping", self.name, signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self, *, once: bool = False) -> None:
        """Claim and run jobs until stopped (or, with `once`, until the queue is empty)."""
        logger.info("worker %s: watching %s", self.name, self.db.engine.url)
        # Shared jobs this worker just found nothing to run in (their parallelism is taken by
        # other workers): passed over until the time noted, so that it looks at other jobs.
        idle: dict[str, float] = {}
        while not (self.stopping.is_set() or self.parent_gone()):
            now = time.monotonic()
            idle = {job_id: until for job_id, until in idle.items() if until > now}
            try:
                job = self.jobs.claim(self.name, lease_s=self.settings.job_lease_s, skip=idle)
            except StorageError as e:
                logger.warning("worker %s: could not claim a job: %s", self.name, e)
                job = None
            if job is None:
                if once:
                    return
                self.stopping.wait(self.settings.poll_interval_s)
                continue
            if self.run_job(job).status is None:
                idle[job.id] = time.monotonic() + self.settings.poll_interval_s
        self.db.dispose()

    def run_job(self, job: Job) -> JobOutcome:
        logger.info("worker %s: running job %s (%s)", self.name, job.id, job.name)
        try:
            spec = JobSpec.model_validate_json(job.spec)
            outcome = self.backend_for(spec).run(job, spec, _Control(self, job))
        except Exception as e:
            logger.exception("job %s failed in its worker", job.id)
            outcome = JobOutcome(JobStatus.FAILED, f"{type(e).__name__}: {e}")
        status = outcome.status
        for attempt in range(5):
            try:
                if status is None:
                    self.jobs.release(job.id, self.name)
                else:
                    self.jobs.finish(job.id, self.name, status, outcome.error)
                break
            except StorageError as e:
                # The outcome must not be lost to one busy database: retry, then leave the job
                # to its lease, which hands it to a worker that will find every trial done.
                logger.warning("worker %s: could not record job %s (%s); retry %d", self.name,
                               job.id, e, attempt + 1)
                self.stopping.wait(2.0**attempt)
        logger.info("worker %s: job %s %s", self.name, job.id,
                    "left to others" if status is None else status.value)
        return outcome
