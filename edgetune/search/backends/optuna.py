"""The Optuna backend: a worker runs a job's study, each trial in its own child process."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

import optuna
from optuna.exceptions import UpdateFinishedTrialError

from edgetune.devices import MeasureConfig
from edgetune.errors import StorageError
from edgetune.search.capacity import TrialSlots
from edgetune.search.device_latency import PROBE_TIMEOUT_S
from edgetune.search.study import (
    AskedTrial,
    JobControl,
    JobOutcome,
    JobStudy,
    ResolvedJob,
    TrialOutcome,
)
from edgetune.search.trial_process import (
    PRELOAD,
    TrialTask,
    run_trial_process,
    warm_up,
)
from edgetune.settings import DataLayout
from edgetune.spaces import Param
from edgetune.spec import JobSpec
from edgetune.storage import Job, JobStatus, optuna_storage, study_store
from edgetune.storage.locks import job_lock

logger = logging.getLogger(__name__)

__all__ = ["JobControl", "JobOutcome", "OptunaBackend", "load_job_study", "trial_context"]


@dataclass
class _Running:
    trial_id: int
    process: BaseProcess
    conn: Connection


def trial_context() -> BaseContext:
    """A fork-server context with torch and the trainers preloaded, so children start fast
    (fork from a clean server, never from a worker holding threads and database handles)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


class OptunaBackend:
    """Runs trials of one job: asks the study for parameters, trains in children, tells the
    results. Any number of workers, on any machines, may run one job together: each asks
    under the job's lock (`job_lock`) while the study holds fewer running trials than the
    job's parallelism and its budget is not spent, and keeps its own trials alive with Optuna's
    heartbeat, so that a dead worker's trials are failed and asked again by the others."""

    def __init__(
        self,
        *,
        storage_url: str,
        artifact_dir: str | None = None,
        layout: DataLayout | None = None,
        latency: MeasureConfig,
        poll_interval_s: float = 0.5,
        heartbeat_interval_s: float = 5.0,
        max_running: int | None = None,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        context: BaseContext | None = None,
        trial_slots: TrialSlots | None = None,
    ) -> None:
        self.probe_timeout_s = probe_timeout_s
        self.storage_url = storage_url
        if layout is None and artifact_dir is None:
            raise ValueError("give the data directory's `layout` (or its `artifact_dir`)")
        #: The data directory: artifacts, datasets, teacher models, caches.
        self.layout = layout or DataLayout.of_artifacts(str(artifact_dir))
        self.latency = latency
        self.poll_interval_s = poll_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s
        #: The most trials this worker runs at once (its share of a machine); None: as many
        #: as the job's parallelism.
        self.max_running = max_running
        self.context = context or trial_context()
        #: The worker's slots, shared with the other jobs it runs at once; None: no limit
        #: beyond `max_running`.
        self.trial_slots = trial_slots
        self._warm = False

    def _warm_up(self) -> None:
        """Start the fork server (it imports torch and the trainers: tens of seconds on a busy
        machine) before this worker asks for a trial: started by the first trial instead, it
        would hold up that trial's heartbeats until other workers took it for dead."""
        if self._warm:
            return
        process = self.context.Process(  # type: ignore[attr-defined]
            target=warm_up, name="warm-up", daemon=True
        )
        process.start()
        process.join(timeout=600)
        self._warm = True

    def run(self, job: Job, spec: JobSpec, control: JobControl) -> JobOutcome:
        self._warm_up()
        storage = optuna_storage(self.storage_url,
                                 heartbeat_s=max(1, round(self.heartbeat_interval_s)))
        study = JobStudy.load(job, storage, spec=spec)
        with job_lock(storage.engine, job.id):
            study.reap_dead()
        running: dict[int, _Running] = {}
        try:
            return self._run(study, storage, control, running)
        except BaseException:
            # Whatever broke (the database, a signal), no child may outlive this run and no
            # trial may stay RUNNING.
            self._stop_all(study, running, "the worker failed while the trial ran")
            raise

    def _run(
        self, study: JobStudy, storage: optuna.storages.RDBStorage, control: JobControl,
        running: dict[int, _Running],
    ) -> JobOutcome:
        job = study.job
        slots = min(job.spec.budget.parallelism, self.max_running or job.spec.budget.parallelism)
        last_heartbeat = time.monotonic()

        while True:
            if time.monotonic() - last_heartbeat >= self.heartbeat_interval_s:
                last_heartbeat = time.monotonic()
                if not control.heartbeat():
                    self._stop_all(study, running, "the job ended or went to another worker")
                    return JobOutcome(None, "lease lost")
                for run in running.values():
                    study.heartbeat(run.trial_id)
                with job_lock(storage.engine, job.job_id):
                    study.reap_dead()
            if control.cancel_requested():
                self._stop_all(study, running, "the job was cancelled")
                self._wait_for_other_workers(study, storage)
                return JobOutcome(JobStatus.CANCELLED, "cancelled by request")
            if control.should_stop():
                self._stop_all(study, running, "the worker stopped")
                return JobOutcome(None, None)

            ask_failed = False
            while len(running) < slots and (
                self.trial_slots is None
                or self.trial_slots.may_start(job.job_id, job.tenant, len(running))
            ):
                try:
                    with job_lock(storage.engine, job.job_id):
                        trial_id = study.new_trial()
                except StorageError as e:
                    # A busy or restarting database: the running trials go on, and the next
                    # round asks again. The job fails only if the database stays away.
                    logger.warning("job %s: could not ask for a trial (%s); trying again",
                                   job.job_id, e)
                    ask_failed = True
                    break
                if trial_id is None:
                    break
                try:
                    asked = study.sample(trial_id)
                    running[asked.number] = self._start(study, trial_id, asked)
                except UpdateFinishedTrialError:
                    # Another worker failed the trial as dead while this one was slow to start
                    # it (no heartbeat for the grace period): it runs again, as any other.
                    logger.warning("job %s: trial id %d was failed by another worker before it "
                                   "started; asking for another", job.job_id, trial_id)
                    continue
                logger.info("job %s: trial %d started with %s", job.job_id, asked.number,
                            asked.params)
            if not running:
                if ask_failed:  # hand the job back; it is claimed again once the database is
                    return JobOutcome(None, None)  # back, by this worker or another
                break

            ready = wait([r.conn for r in running.values()], timeout=self.poll_interval_s)
            for number, run in list(running.items()):
                if run.conn in ready:
                    del running[number]
                    state = study.tell(run.trial_id, _receive(run))
                    logger.info("job %s: trial %d %s", job.job_id, number, state.name.lower())

        # This worker has nothing left to run. The job has ended when no trial runs anywhere
        # and none may be asked; otherwise other workers (or this one, joining again) go on.
        try:
            done = study.is_done()
        except StorageError as e:
            logger.warning("job %s: could not read its budget (%s); handing it back",
                           job.job_id, e)
            return JobOutcome(None, None)
        return study.outcome() if done else JobOutcome(None, None)

    # --- steps -----------------------------------------------------------------------------
    def _start(self, study: JobStudy, trial_id: int, asked: AskedTrial) -> _Running:
        number = asked.number
        task = TrialTask(
            job=study.job,
            storage_url=self.storage_url,
            trial_id=trial_id,
            number=number,
            params=asked.params,
            one_shot=asked.one_shot,
            layout=self.layout,
            latency=self.latency,
            probe_timeout_s=self.probe_timeout_s,
        )
        receiver, sender = self.context.Pipe(duplex=False)
        process = self.context.Process(  # type: ignore[attr-defined]
            target=run_trial_process, args=(task, sender), name=f"trial-{number}",
            daemon=True,
        )
        try:
            process.start()
        except BaseException as e:
            study.tell(trial_id, TrialOutcome.failed(
                f"could not start the trial's process: {e}", infra=True))
            raise
        sender.close()  # the child holds the only sending end: EOF means it is gone
        try:
            study_store.set_user_attr(study.study, trial_id, "pid", process.pid)
        except (UpdateFinishedTrialError, StorageError):
            process.kill()
            process.join(timeout=10)
            receiver.close()
            raise
        return _Running(trial_id=trial_id, process=process, conn=receiver)

    def _wait_for_other_workers(
        self, study: JobStudy, storage: optuna.storages.RDBStorage
    ) -> None:
        """Wait, bounded, until the trials other workers run for the job have stopped too (each
        stops its own once it sees the cancellation; a dead worker's are reaped), so that a
        job reads "cancelled" only once nothing of it runs."""
        deadline = time.monotonic() + 2 * self.heartbeat_interval_s + 10 * self.poll_interval_s
        while time.monotonic() < deadline:
            try:
                with job_lock(storage.engine, study.job.job_id):
                    study.reap_dead()
                if study.budget().running == 0:
                    return
            except StorageError as e:
                logger.warning("job %s: could not read its running trials (%s)",
                               study.job.job_id, e)
            time.sleep(self.poll_interval_s)

    def _stop_all(self, study: JobStudy, running: dict[int, _Running], reason: str) -> None:
        for run in running.values():
            run.process.kill()
        for number, run in list(running.items()):
            run.process.join(timeout=10)
            run.conn.close()
            try:
                study.tell(run.trial_id, TrialOutcome.failed(reason, infra=True))
            except Exception:
                # The next owner of the job fails it as a leftover.
                logger.exception("could not mark trial %d failed", number)
        running.clear()


def load_job_study(
    job: Job, spec: JobSpec, space: list[Param], storage: str | optuna.storages.BaseStorage
) -> optuna.Study:
    """The job's study with the sampler and pruner the spec names (`ResolvedJob.load_study`)."""
    return replace(ResolvedJob.of(job, spec), space=space).load_study(storage)


def _receive(run: _Running) -> TrialOutcome:
    try:
        result: TrialOutcome = run.conn.recv()
    except (EOFError, OSError):
        run.process.join(timeout=10)
        code = run.process.exitcode
        how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exited with code {code}")
        result = TrialOutcome.failed(f"the trial's process {how} before reporting")
    run.process.join(timeout=10)
    run.conn.close()
    return result
