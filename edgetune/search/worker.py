"""A worker: takes jobs from the database (starting queued ones, joining shared running ones)
and runs their trials, several jobs at once, each in a thread of its own, all drawing their
trial processes from the worker's slots (`TrialSlots`)."""

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
from edgetune.search.capacity import TrialSlots
from edgetune.settings import Settings
from edgetune.spec import JobSpec
from edgetune.storage import Job, JobRepository, JobStatus, open_database
from edgetune.storage.study_store import tenant_running_trials

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
    """Claims jobs while it has free trial slots and runs each in a thread of its own, until
    asked to stop: a small job claimed while a big one runs starts at once beside it."""

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
        self.trial_slots = TrialSlots(
            max_trials=settings.worker_max_trials,
            spare=settings.worker_spare_trials,
            tenant_max_trials=settings.tenant_max_trials,
            count_tenant_trials=lambda tenant: tenant_running_trials(self.db.engine, tenant),
        )
        #: The jobs running now, by id, each in its thread.
        self.job_threads: dict[str, threading.Thread] = {}
        #: Shared jobs this worker just found nothing to run in (their parallelism is taken by
        #: other workers, or their tenant's trials by other jobs): passed over until the time
        #: noted, so that it looks at other jobs.
        self.idle: dict[str, float] = {}
        self._idle_lock = threading.Lock()
        self.backend = OptunaBackend(
            storage_url=self.db.url,
            layout=settings.layout,
            latency=self.latency,
            poll_interval_s=min(0.5, settings.poll_interval_s),
            heartbeat_interval_s=min(settings.job_lease_s / 4, MAX_HEARTBEAT_S),
            max_running=settings.worker_trials,
            probe_timeout_s=settings.probe_timeout_s,
            trial_slots=self.trial_slots,
        )
        self._ray: Backend | None = None
        self._ray_lock = threading.Lock()

    def backend_for(self, spec: JobSpec) -> Backend:
        """The backend a job names; Ray is imported (and started) with its first job."""
        if spec.algorithm.backend == "optuna":
            return self.backend
        with self._ray_lock:  # two job threads must not start two Rays
            if self._ray is None:
                from edgetune.search.backends.ray import RayBackend

                self._ray = RayBackend(
                    storage_url=self.db.url,
                    layout=self.settings.layout,
                    latency=self.latency,
                    ray_address=self.settings.ray_address,
                    heartbeat_interval_s=self.settings.job_lease_s / 4,
                    probe_timeout_s=self.settings.probe_timeout_s,
                    max_trials=self._ray_max_trials(),
                )
            return self._ray

    def _ray_max_trials(self) -> int | None:
        """A ray job's trials at once: the tenant's bound, and on a local Ray (trials on this
        machine) the worker's trial processes too; None: no bound but the job's parallelism.
        Ray Tune schedules its trials itself, so this caps them up front, per job, rather than
        slot by slot."""
        local = None if self.settings.ray_address else self.settings.worker_max_trials
        bounds = [b for b in (self.settings.tenant_max_trials, local) if b is not None]
        return min(bounds, default=None)

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
        """Claim and run jobs until stopped (or, with `once`, until the queue is empty and
        every job it took has ended). Signals reach the main thread only: it runs this loop,
        the jobs run in threads of their own and learn of a stop through `stopping`."""
        logger.info("worker %s: watching %s (at most %d trials at once)", self.name,
                    self.db.engine.url, self.trial_slots.max_trials)
        try:
            while not (self.stopping.is_set() or self.parent_gone()):
                self._reap()
                job = self._claim() if self._has_room() else None
                if job is not None:
                    self._start(job)
                    continue  # free slots left: look for another job at once
                if once and not self.job_threads:
                    return
                self.stopping.wait(self.settings.poll_interval_s)
        finally:
            # A stop (or a lost parent) reaches each job through `_Control.should_stop`: it
            # stops its trials and hands its job back.
            self.stopping.set()
            for thread in list(self.job_threads.values()):
                thread.join(timeout=60)
            self._reap()
            self.db.dispose()

    def _has_room(self) -> bool:
        # One job per slot at most: a job needs a slot to run anything.
        return (self.trial_slots.free > 0
                and len(self.job_threads) < self.trial_slots.max_trials)

    def _claim(self) -> Job | None:
        now = time.monotonic()
        with self._idle_lock:
            self.idle = {job_id: until for job_id, until in self.idle.items() if until > now}
            skip = {*self.idle, *self.job_threads}
        # The spare slots are for jobs that wait for a worker, not for joining running ones.
        join = self.trial_slots.free > self.trial_slots.spare
        try:
            return self.jobs.claim(self.name, lease_s=self.settings.job_lease_s, skip=skip,
                                   join=join)
        except StorageError as e:
            logger.warning("worker %s: could not claim a job: %s", self.name, e)
            return None

    def _start(self, job: Job) -> None:
        thread = threading.Thread(target=self._run_in_thread, args=(job,),
                                  name=f"job-{job.id[:8]}", daemon=True)
        self.job_threads[job.id] = thread
        thread.start()

    def _run_in_thread(self, job: Job) -> None:
        try:
            outcome = self.run_job(job)
        finally:
            self.trial_slots.leave(job.id)
        if outcome.status is None:
            with self._idle_lock:
                self.idle[job.id] = time.monotonic() + self.settings.poll_interval_s

    def _reap(self) -> None:
        for job_id, thread in list(self.job_threads.items()):
            if not thread.is_alive():
                del self.job_threads[job_id]

    def run_job(self, job: Job) -> JobOutcome:
        logger.info("worker %s: running job %s (%s)", self.name, job.id, job.name)
        try:
            spec = job.spec
            outcome = self.backend_for(spec).run(job, spec, _Control(self, job))
        except StorageError as e:
            # The database went away mid-job (a restart, a failover): the backend has stopped
            # the job's trials, which run again; the job goes back to be claimed again once
            # the database answers, rather than failing for a passing outage.
            logger.warning("worker %s: job %s: the database failed (%s); handing the job back",
                           self.name, job.id, e)
            outcome = JobOutcome(None, str(e))
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
