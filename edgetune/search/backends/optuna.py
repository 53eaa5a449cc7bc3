"""The Optuna backend: a worker runs a job's study, each trial in its own child process."""

from __future__ import annotations

import logging
import math
import multiprocessing
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from edgetune.devices import MeasureConfig
from edgetune.errors import StorageError
from edgetune.search.constraints import violations
from edgetune.search.device_latency import PROBE_TIMEOUT_S
from edgetune.search.registry import PRUNERS, SAMPLERS, AlgorithmContext
from edgetune.search.samplers import TrialSeededSampler
from edgetune.search.space import suggest
from edgetune.search.trial_process import (
    PRELOAD,
    TrialTask,
    run_trial_process,
    warm_up,
)
from edgetune.spaces import Param, resolve_space
from edgetune.spec import JobSpec
from edgetune.storage import Job, JobStatus, optuna_storage, study_store, utcnow
from edgetune.storage.locks import job_lock
from edgetune.storage.study_store import ERROR_ATTR, INFRA_FAILURE_KEY

logger = logging.getLogger(__name__)

#: A job stops starting trials when this many have ended and every one of them failed.
MAX_INITIAL_FAILURES = 5


class JobControl(Protocol):
    """What the backend asks its worker between steps of a job."""

    def heartbeat(self) -> bool:
        """Renew the job's lease; False when another worker has taken the job over."""

    def cancel_requested(self) -> bool:
        """True once a user has asked to cancel the job."""

    def should_stop(self) -> bool:
        """True when the worker is shutting down and must hand the job back."""


@dataclass(frozen=True)
class JobOutcome:
    """How a job's run ended; `status` None means it was handed back unfinished."""

    status: JobStatus | None
    error: str | None = None


@dataclass
class _Running:
    trial: optuna.Trial
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
        artifact_dir: str,
        latency: MeasureConfig,
        poll_interval_s: float = 0.5,
        heartbeat_interval_s: float = 5.0,
        max_running: int | None = None,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        context: BaseContext | None = None,
    ) -> None:
        self.probe_timeout_s = probe_timeout_s
        self.storage_url = storage_url
        self.artifact_dir = artifact_dir
        self.latency = latency
        self.poll_interval_s = poll_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s
        #: The most trials this worker runs at once (its share of a machine); None: as many
        #: as the job's parallelism.
        self.max_running = max_running
        self.context = context or trial_context()
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
        space = resolve_space(spec.space.name, spec.space.params)
        storage = optuna_storage(self.storage_url,
                                 heartbeat_s=max(1, round(self.heartbeat_interval_s)))
        study = load_job_study(job, spec, space, storage)
        with job_lock(storage.engine, job.id):
            fail_dead_trials(study, storage)
        running: dict[int, _Running] = {}
        try:
            return self._run(job, spec, space, control, study, storage, running)
        except BaseException:
            # Whatever broke (the database, a signal), no child may outlive this run and no
            # trial may stay RUNNING.
            self._stop_all(study, running, "the worker failed while the trial ran")
            raise

    def _run(
        self, job: Job, spec: JobSpec, space: list[Param], control: JobControl,
        study: optuna.Study, storage: optuna.storages.RDBStorage,
        running: dict[int, _Running],
    ) -> JobOutcome:
        budget = spec.budget
        n_trials = trial_budget(spec, space)
        slots = min(budget.parallelism, self.max_running or budget.parallelism)
        deadline = (
            job.started_at + timedelta(seconds=budget.timeout_s)
            if budget.timeout_s and job.started_at else None
        )
        report_to_pruner = spec.algorithm.pruner != "none"
        last_heartbeat = time.monotonic()

        while True:
            if time.monotonic() - last_heartbeat >= self.heartbeat_interval_s:
                last_heartbeat = time.monotonic()
                if not control.heartbeat():
                    self._stop_all(study, running, "the job ended or went to another worker")
                    return JobOutcome(None, "lease lost")
                for run in running.values():
                    study_store.record_heartbeat(study, study_store.trial_id(run.trial))
                with job_lock(storage.engine, job.id):
                    fail_dead_trials(study, storage)
            if control.cancel_requested():
                self._stop_all(study, running, "the job was cancelled")
                return JobOutcome(JobStatus.CANCELLED, "cancelled by request")
            if control.should_stop():
                self._stop_all(study, running, "the worker stopped")
                return JobOutcome(None, None)

            timed_out = deadline is not None and utcnow() >= deadline
            ask_failed = False
            while not timed_out and len(running) < slots:
                try:
                    with job_lock(storage.engine, job.id):
                        if not BudgetState.of(study, storage).may_ask(n_trials,
                                                                      budget.parallelism):
                            break
                        trial_id = new_trial(study, storage)
                except StorageError as e:
                    # A busy or restarting database: the running trials go on, and the next
                    # round asks again. The job fails only if the database stays away.
                    logger.warning("job %s: could not ask for a trial (%s); trying again", job.id,
                                   e)
                    ask_failed = True
                    break
                try:
                    trial = sampled_trial(study, trial_id)
                    params = suggest(trial, space)
                    fixed = {k: v for k, v in params.items() if k not in trial.params}
                    if fixed:
                        trial.set_user_attr("fixed_params", fixed)
                    running[trial.number] = self._start(
                        study, trial, params, spec, report_to_pruner, job.tenant
                    )
                except UpdateFinishedTrialError:
                    # Another worker failed the trial as dead while this one was slow to start
                    # it (no heartbeat for the grace period): it runs again, as any other.
                    logger.warning("job %s: trial id %d was failed by another worker before it "
                                   "started; asking for another", job.id, trial_id)
                    continue
                logger.info("job %s: trial %d started with %s", job.id, trial.number, params)
            if not running:
                if ask_failed:  # hand the job back; it is claimed again once the database is
                    return JobOutcome(None, None)  # back, by this worker or another
                break

            ready = wait([r.conn for r in running.values()], timeout=self.poll_interval_s)
            for number, run in list(running.items()):
                if run.conn in ready:
                    del running[number]
                    result = _receive(run)
                    state = tell_result(study, run.trial, spec.metric_names, result)
                    logger.info("job %s: trial %d %s", job.id, number, state.name.lower())

        # This worker has nothing left to run. The job has ended when no trial runs anywhere
        # and none may be asked; otherwise other workers (or this one, joining again) go on.
        try:
            used = BudgetState.of(study, storage)
        except StorageError as e:
            logger.warning("job %s: could not read its budget (%s); handing it back", job.id, e)
            return JobOutcome(None, None)
        timed_out = deadline is not None and utcnow() >= deadline
        if used.running == 0 and (timed_out or not used.may_ask(n_trials, budget.parallelism)):
            return job_outcome(study, n_trials=n_trials, timed_out=timed_out)
        return JobOutcome(None, None)

    # --- steps -----------------------------------------------------------------------------
    def _start(
        self, study: optuna.Study, trial: optuna.Trial, params: dict[str, Any], spec: JobSpec,
        report_to_pruner: bool, tenant: str,
    ) -> _Running:
        task = TrialTask(
            storage_url=self.storage_url,
            study_name=study.study_name,
            trial_id=study_store.trial_id(trial),
            number=trial.number,
            params=params,
            spec_json=spec.model_dump_json(),
            artifact_dir=self.artifact_dir,
            report_to_pruner=report_to_pruner,
            latency=self.latency,
            probe_timeout_s=self.probe_timeout_s,
            tenant=tenant,
        )
        receiver, sender = self.context.Pipe(duplex=False)
        process = self.context.Process(  # type: ignore[attr-defined]
            target=run_trial_process, args=(task, sender), name=f"trial-{trial.number}",
            daemon=True,
        )
        try:
            process.start()
        except BaseException as e:
            tell_result(study, trial, [], {"state": "failed", "infra": True,
                                         "error": f"could not start the trial's process: {e}"})
            raise
        sender.close()  # the child holds the only sending end: EOF means it is gone
        try:
            trial.set_user_attr("pid", process.pid)
        except UpdateFinishedTrialError:
            process.kill()
            process.join(timeout=10)
            receiver.close()
            raise
        return _Running(trial=trial, process=process, conn=receiver)

    def _stop_all(self, study: optuna.Study, running: dict[int, _Running], reason: str) -> None:
        for run in running.values():
            run.process.kill()
        for run in list(running.values()):
            run.process.join(timeout=10)
            run.conn.close()
            try:
                tell_result(study, run.trial, [],
                           {"state": "failed", "error": reason, "infra": True})
            except Exception:
                # The next owner of the job fails it as a leftover.
                logger.exception("could not mark trial %d failed", run.trial.number)
        running.clear()

@dataclass(frozen=True)
class TrialRef:
    """A trial by its storage id and number: enough to tell it, without building an
    `optuna.Trial` (which reads the whole trial back and hands it to the sampler)."""

    trial_id: int
    number: int


def tell_result(
    study: optuna.Study, trial: optuna.Trial | TrialRef, metric_names: list[str],
    result: Mapping[str, Any],
) -> TrialState:
    """Record the result on the trial and finish it, in one transaction; returns the state it
    ended in. A trial that is already finished (another worker took the job over and failed it
    as a leftover) is left as it is."""
    trial_id = (study_store.trial_id(trial) if isinstance(trial, optuna.Trial)
                else trial.trial_id)
    metrics = {k: float(v) for k, v in result.get("metrics", {}).items()}
    attrs: dict[str, Any] = {**metrics, **result.get("user_attrs", {})}
    state = result["state"]
    if state == "complete":
        values = [metrics.get(key, math.nan) for key in metric_names]
        missing = [k for k, v in zip(metric_names, values, strict=True)
                   if not math.isfinite(v)]
        if not missing:
            return study_store.finish_trial(study, trial_id, TrialState.COMPLETE, values, attrs)
        state, result = "failed", {"error": f"the trial did not measure {', '.join(missing)}"}
    if state == "pruned":
        return study_store.finish_trial(study, trial_id, TrialState.PRUNED, None, attrs)
    attrs[ERROR_ATTR] = str(result.get("error"))
    if result.get("traceback"):
        attrs["traceback"] = str(result["traceback"])[-4000:]
    if result.get("infra"):
        attrs[INFRA_FAILURE_KEY] = True
    return study_store.finish_trial(study, trial_id, TrialState.FAIL, None, attrs)


@dataclass(frozen=True)
class BudgetState:
    """How much of a job's budget its study has used, read under the job's lock."""

    counted: int  # finished trials that use budget (not infrastructure failures)
    succeeded: int  # of those, the ones that did not fail
    running: int

    @classmethod
    def of(cls, study: optuna.Study, storage: optuna.storages.RDBStorage) -> BudgetState:
        """The counts in one SQL query, not through `study.get_trials`: Optuna's cached storage
        rebuilds every unfinished trial on each read (about 1 ms a trial), and this is read
        under the job's lock on every ask, so with 16 trials running each ask held up all the
        others' for 15 ms. Counts as `_counts` does."""
        counts = study_store.trial_counts(study)
        return cls(counted=counts.counted, succeeded=counts.succeeded, running=counts.running)

    def may_ask(self, n_trials: int, parallelism: int) -> bool:
        # A spec that makes every trial fail (a missing dataset, a bad option) should not
        # burn its whole budget: stop asking once the first few all failed.
        hopeless = self.succeeded == 0 and self.counted >= MAX_INITIAL_FAILURES
        return (not hopeless and self.running < parallelism
                and self.counted + self.running < n_trials)


def new_trial(study: optuna.Study, storage: optuna.storages.RDBStorage) -> int:
    """A new trial (or one enqueued) with its first heartbeat, not sampled yet: call it under
    the job's lock, and sample after the lock with `sampled_trial`. The lock guards the slot;
    sampling (TPE's, GP's) can take long and need not hold up other processes' asks."""
    return study_store.create_trial(study)


def sampled_trial(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """The trial, with the sampler's relative parameters drawn (the rest of `Study.ask`)."""
    return study_store.sampled_trial(study, trial_id)


def fail_dead_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """Fail the trials whose worker died, as infrastructure failures (so others run again).
    Call it under the job's lock (see `study_store.fail_dead_trials`)."""
    study_store.fail_dead_trials(study)


def fail_leftovers(study: optuna.Study) -> None:
    # This worker holds the job's lease, so a trial still RUNNING was left by a worker that
    # died: it failed through no fault of its parameters and is run again.
    study_store.fail_running_trials(study, "its worker died")


def job_outcome(study: optuna.Study, *, n_trials: int, timed_out: bool) -> JobOutcome:
    trials = [t for t in study.get_trials(deepcopy=False) if _counts(t)]
    if any(t.state == TrialState.COMPLETE for t in trials):
        return JobOutcome(JobStatus.SUCCEEDED)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if failed:
        first = failed[0]
        stopped = (" (the job stopped early: the first trials all failed)"
                   if len(trials) < n_trials else "")
        return JobOutcome(
            JobStatus.FAILED,
            f"all {len(failed)} trials failed{stopped}; trial {first.number}: "
            f"{first.user_attrs.get(ERROR_ATTR, 'no reason recorded')}",
        )
    if trials:
        return JobOutcome(JobStatus.FAILED, f"all {len(trials)} trials were pruned")
    if timed_out:
        return JobOutcome(JobStatus.FAILED, "the time budget ran out before any trial ended")
    return JobOutcome(JobStatus.FAILED, "no trial ran")


def load_job_study(
    job: Job, spec: JobSpec, space: list[Param], storage: str | optuna.storages.BaseStorage
) -> optuna.Study:
    """The job's study with the sampler (seeded per trial number: `TrialSeededSampler`) and, on
    this backend, the pruner the spec names."""
    constraints_func = None
    if spec.constraints:
        constraints = list(spec.constraints)

        def constraints_func(t: optuna.trial.FrozenTrial) -> list[float]:
            return violations(constraints, t.user_attrs)

    entry = SAMPLERS[spec.algorithm.sampler]
    ctx = AlgorithmContext(
        spec, space, constraints_func=constraints_func if entry.constraints else None
    )
    build_pruner = PRUNERS[spec.algorithm.pruner].optuna

    def build_sampler(seed: int | None) -> optuna.samplers.BaseSampler:
        return entry.build(replace(ctx, spec=spec.model_copy(update={"seed": seed})))

    return optuna.load_study(
        study_name=job.study_name,
        storage=optuna_storage(storage) if isinstance(storage, str) else storage,
        sampler=TrialSeededSampler(build_sampler, seed=spec.seed),
        pruner=build_pruner(ctx) if build_pruner is not None else None,
    )


def trial_budget(spec: JobSpec, space: list[Param]) -> int:
    """How many trials the job runs: `n_trials`, or fewer when the sampler runs out (a grid)."""
    max_trials = SAMPLERS[spec.algorithm.sampler].max_trials
    n = spec.budget.n_trials
    return n if max_trials is None else min(n, max_trials(space))


def count_finished(study: optuna.Study) -> int:
    """Trials that used up budget so far."""
    return sum(1 for t in study.get_trials(deepcopy=False) if _counts(t))


def _counts(t: optuna.trial.FrozenTrial) -> bool:
    """Whether a finished trial uses up budget (infrastructure failures do not)."""
    if t.state == TrialState.FAIL:
        return not t.user_attrs.get(INFRA_FAILURE_KEY, False)
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED)


def _receive(run: _Running) -> dict[str, Any]:
    try:
        result: dict[str, Any] = run.conn.recv()
    except (EOFError, OSError):
        run.process.join(timeout=10)
        code = run.process.exitcode
        how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exited with code {code}")
        result = {"state": "failed", "error": f"the trial's process {how} before reporting"}
    run.process.join(timeout=10)
    run.conn.close()
    return result
