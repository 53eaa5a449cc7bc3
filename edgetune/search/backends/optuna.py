"""The Optuna backend: a worker runs a job's study, each trial in its own child process."""

from __future__ import annotations

import logging
import math
import multiprocessing
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from edgetune.devices import MeasureConfig
from edgetune.search.constraints import violations
from edgetune.search.registry import PRUNERS, SAMPLERS, AlgorithmContext
from edgetune.search.space import suggest
from edgetune.search.trial_process import (
    PRELOAD,
    TrialTask,
    run_trial_process,
)
from edgetune.spaces import Param, resolve_space
from edgetune.spec import JobSpec
from edgetune.storage import Job, JobStatus, optuna_storage, utcnow
from edgetune.storage.trials import INFRA_FAILURE_KEY

logger = logging.getLogger(__name__)

#: A job stops starting trials when this many have ended and every one of them failed.
MAX_INITIAL_FAILURES = 5
ERROR_ATTR = "error"


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
    """Runs one job: asks the study for parameters, trains in children, tells the results."""

    def __init__(
        self,
        *,
        storage_url: str,
        artifact_dir: str,
        latency: MeasureConfig,
        poll_interval_s: float = 0.5,
        heartbeat_interval_s: float = 5.0,
        context: BaseContext | None = None,
    ) -> None:
        self.storage_url = storage_url
        self.artifact_dir = artifact_dir
        self.latency = latency
        self.poll_interval_s = poll_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.context = context or trial_context()

    def run(self, job: Job, spec: JobSpec, control: JobControl) -> JobOutcome:
        space = resolve_space(spec.space.name, spec.space.params)
        study = load_job_study(job, spec, space, self.storage_url)
        fail_leftovers(study)
        running: dict[int, _Running] = {}
        try:
            return self._run(job, spec, space, control, study, running)
        except BaseException:
            # Whatever broke (the database, a signal), no child may outlive this run and no
            # trial may stay RUNNING.
            self._stop_all(study, running, "the worker failed while the trial ran")
            raise

    def _run(
        self, job: Job, spec: JobSpec, space: list[Param], control: JobControl,
        study: optuna.Study, running: dict[int, _Running],
    ) -> JobOutcome:
        budget = spec.budget
        n_trials = trial_budget(spec, space)
        deadline = (
            job.started_at + timedelta(seconds=budget.timeout_s)
            if budget.timeout_s and job.started_at else None
        )
        finished = [t for t in study.get_trials(deepcopy=False) if _counts(t)]
        counted = len(finished)
        succeeded = sum(1 for t in finished if t.state != TrialState.FAIL)
        report_to_pruner = spec.algorithm.pruner != "none"
        last_heartbeat = time.monotonic()

        while True:
            if time.monotonic() - last_heartbeat >= self.heartbeat_interval_s:
                last_heartbeat = time.monotonic()
                if not control.heartbeat():
                    self._stop_all(study, running, "the worker lost the job's lease")
                    return JobOutcome(None, "lease lost")
            if control.cancel_requested():
                self._stop_all(study, running, "the job was cancelled")
                return JobOutcome(JobStatus.CANCELLED, "cancelled by request")
            if control.should_stop():
                self._stop_all(study, running, "the worker stopped")
                return JobOutcome(None, None)

            timed_out = deadline is not None and utcnow() >= deadline
            # A spec that makes every trial fail (a missing dataset, a bad option) should not
            # burn its whole budget: stop starting trials once the first few all failed.
            hopeless = succeeded == 0 and counted >= MAX_INITIAL_FAILURES
            while (not timed_out and not hopeless and len(running) < budget.parallelism
                   and counted + len(running) < n_trials):
                trial = study.ask()
                params = suggest(trial, space)
                fixed = {k: v for k, v in params.items() if k not in trial.params}
                if fixed:
                    trial.set_user_attr("fixed_params", fixed)
                running[trial.number] = self._start(
                    study, trial, params, spec, report_to_pruner
                )
                logger.info("job %s: trial %d started with %s", job.id, trial.number, params)
            if not running:
                break

            ready = wait([r.conn for r in running.values()], timeout=self.poll_interval_s)
            for number, run in list(running.items()):
                if run.conn in ready:
                    del running[number]
                    result = _receive(run)
                    state = tell_result(study, run.trial, spec.metric_names, result)
                    counted += 1
                    succeeded += state != TrialState.FAIL
                    logger.info("job %s: trial %d %s", job.id, number, state.name.lower())

        return job_outcome(study, n_trials=n_trials,
                             timed_out=deadline is not None and utcnow() >= deadline)

    # --- steps -----------------------------------------------------------------------------
    def _start(
        self, study: optuna.Study, trial: optuna.Trial, params: dict[str, Any], spec: JobSpec,
        report_to_pruner: bool,
    ) -> _Running:
        task = TrialTask(
            storage_url=self.storage_url,
            study_name=study.study_name,
            trial_id=trial._trial_id,
            number=trial.number,
            params=params,
            spec_json=spec.model_dump_json(),
            artifact_dir=self.artifact_dir,
            report_to_pruner=report_to_pruner,
            latency=self.latency,
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
        trial.set_user_attr("pid", process.pid)
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

def tell_result(
    study: optuna.Study, trial: optuna.Trial, metric_names: list[str],
    result: Mapping[str, Any],
) -> TrialState:
    """Record the result on the trial and finish it; returns the state it ended in.

    A trial that is already finished (another worker took the job over and failed it as
    a leftover) is left as it is.
    """
    try:
        return _record(study, trial, metric_names, result)
    except (UpdateFinishedTrialError, ValueError) as e:
        current = study._storage.get_trial(trial._trial_id).state
        if current.is_finished():
            logger.warning("trial %d was already %s: %s", trial.number, current.name, e)
            return current
        raise

def _record(
    study: optuna.Study, trial: optuna.Trial, metric_names: list[str],
    result: Mapping[str, Any],
) -> TrialState:
    metrics = {k: float(v) for k, v in result.get("metrics", {}).items()}
    for key, value in metrics.items():
        trial.set_user_attr(key, value)
    for key, value in result.get("user_attrs", {}).items():
        trial.set_user_attr(key, value)
    state = result["state"]
    if state == "complete":
        values = [metrics.get(key, math.nan) for key in metric_names]
        missing = [k for k, v in zip(metric_names, values, strict=True)
                   if not math.isfinite(v)]
        if not missing:
            study.tell(trial, values)
            return TrialState.COMPLETE
        state, result = "failed", {"error": f"the trial did not measure {', '.join(missing)}"}
    if state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    trial.set_user_attr(ERROR_ATTR, str(result.get("error")))
    if result.get("traceback"):
        trial.set_user_attr("traceback", str(result["traceback"])[-4000:])
    if result.get("infra"):
        trial.set_user_attr(INFRA_FAILURE_KEY, True)
    study.tell(trial, state=TrialState.FAIL)
    return TrialState.FAIL

def fail_leftovers(study: optuna.Study) -> None:
    # This worker holds the job's lease, so a trial still RUNNING was left by a worker that
    # died: it failed through no fault of its parameters and is run again.
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, ERROR_ATTR, "its worker died")
        study._storage.set_trial_user_attr(t._trial_id, INFRA_FAILURE_KEY, True)
        study.tell(t.number, state=TrialState.FAIL)
        logger.warning("trial %d of %s was left running; marked failed", t.number,
                       study.study_name)

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
    job: Job, spec: JobSpec, space: list[Param], storage_url: str
) -> optuna.Study:
    """The job's study with the sampler (and, on this backend, the pruner) the spec names."""
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
    return optuna.load_study(
        study_name=job.study_name,
        storage=optuna_storage(storage_url),
        sampler=entry.build(ctx),
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
