"""Ask/tell: clients train anywhere; the server asks the job's study for parameters, hands their
progress to its pruner and records their results.

The server keeps one loaded study per job (`AskTellStudies`, least recently used first out):
Optuna's cached storage under it holds the finished trials, so an ask on a busy job reads only
the trials that changed, not all of them. Asks take the job's lock (`job_lock`), so budget and
parallelism hold across server processes and workers, and every asked trial has a heartbeat
from the start: a client that goes silent has its trial failed and asked again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from optuna.trial import TrialState

from edgetune.errors import ConflictError, InvalidSpecError, NotFoundError
from edgetune.search.backends.optuna import (
    BudgetState,
    TrialRef,
    fail_dead_trials,
    job_outcome,
    load_job_study,
    new_trial,
    sampled_trial,
    tell_result,
    trial_budget,
)
from edgetune.search.schedulers import report_progress
from edgetune.search.space import suggest
from edgetune.spaces import Param, resolve_space
from edgetune.spec import JobSpec
from edgetune.storage import Job, JobRepository, JobStatus, optuna_storage, study_store
from edgetune.storage.locks import job_lock

logger = logging.getLogger(__name__)

#: The system attribute naming the client an ask/tell trial was asked by.
CLIENT_KEY = "ask_tell:client_id"
#: Who ends an ask/tell job, in the job's lease columns.
OWNER = "ask-tell"


@dataclass(frozen=True)
class AskedTrial:
    number: int
    params: dict[str, Any]
    resumed: bool  # the client's own unfinished trial, asked again


@dataclass
class _JobStudy:
    spec: JobSpec
    space: list[Param]
    study: optuna.Study
    storage: optuna.storages.RDBStorage
    n_trials: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    reaped_at: float = 0.0


class AskTellStudies:
    """The ask/tell side of every job, for one server process."""

    def __init__(self, jobs: JobRepository, *, heartbeat_s: int = 15, max_jobs: int = 64) -> None:
        self.jobs = jobs
        self.heartbeat_s = heartbeat_s
        self.max_jobs = max_jobs
        self._studies: OrderedDict[str, _JobStudy] = OrderedDict()
        self._lock = threading.Lock()

    # --- the three calls ---------------------------------------------------------------------
    def ask(self, job: Job, client_id: str) -> AskedTrial:
        """The client's unfinished trial if it has one (asks are idempotent per client), else
        a new trial; ConflictError when the job has ended, spent its budget or runs its
        parallelism already."""
        js = self._study(job)
        # The job's lock guards the slot (budget, parallelism, the client's one trial); the
        # in-process lock also covers the sampling, since the per-trial seeded sampler is one
        # object per job here.
        with js.lock:
            with job_lock(js.storage.engine, job.id):
                trial_id = self._client_trial(js, client_id)
                resumed = trial_id is not None
                if trial_id is not None:
                    study_store.record_heartbeat(js.study, trial_id)
                else:
                    if time.monotonic() - js.reaped_at >= self.heartbeat_s:
                        fail_dead_trials(js.study, js.storage)
                        js.reaped_at = time.monotonic()
                    used = BudgetState.of(js.study, js.storage)
                    if not used.may_ask(js.n_trials, js.spec.budget.parallelism):
                        raise ConflictError(_why_not(used, js))
                    trial_id = new_trial(js.study, js.storage)
                    study_store.set_system_attr(js.study, trial_id, CLIENT_KEY, client_id)
            trial = sampled_trial(js.study, trial_id)
            params = suggest(trial, js.space)
        fixed = {k: v for k, v in params.items() if k not in trial.params}
        if fixed and not resumed:
            trial.set_user_attr("fixed_params", fixed)
        return AskedTrial(number=trial.number, params=params, resumed=resumed)

    def report(self, job: Job, number: int, step: int, values: Mapping[str, float]) -> bool:
        """Record a running trial's progress; True when the job's pruner says stop it."""
        js = self._study(job)
        trial_id = self._running_id(js, job, number)
        study_store.record_heartbeat(js.study, trial_id)
        if js.spec.algorithm.pruner == "none":
            if len(js.spec.objectives) == 1:  # kept for the learning curves all the same
                optuna.Trial(js.study, trial_id).report(_ordered(js.spec, values)[0], step)
            return False
        return report_progress(js.study, trial_id, step, _ordered(js.spec, values))

    def tell(
        self, job: Job, number: int, state: Literal["complete", "pruned", "failed"],
        values: Mapping[str, float], metrics: Mapping[str, float], error: str | None,
    ) -> TrialState:
        """Finish a trial (telling a finished one again changes nothing) and end the job once
        its budget is spent and no trial runs."""
        js = self._study(job)
        trial_id = self._id_of(js, job, number)
        if state == "complete":
            _ordered(js.spec, values)  # every objective, or a 422 before anything is stored
        result = {"state": state, "metrics": {**metrics, **values}, "error": error}
        ended = tell_result(js.study, TrialRef(trial_id, number), js.spec.metric_names, result)
        self._end_job_if_done(js, job)
        return ended

    # --- internals -------------------------------------------------------------------------
    def _study(self, job: Job) -> _JobStudy:
        if job.status != JobStatus.RUNNING.value:
            raise ConflictError(f"job {job.id!r} has {job.status}")
        with self._lock:
            js = self._studies.get(job.id)
            if js is not None:
                self._studies.move_to_end(job.id)
                return js
        spec = JobSpec.model_validate_json(job.spec)
        space = resolve_space(spec.space.name, spec.space.params)
        storage = optuna_storage(self.jobs.db.url, heartbeat_s=self.heartbeat_s)
        js = _JobStudy(spec=spec, space=space, study=load_job_study(job, spec, space, storage),
                       storage=storage, n_trials=trial_budget(spec, space))
        with self._lock:
            js = self._studies.setdefault(job.id, js)
            while len(self._studies) > self.max_jobs:
                self._studies.popitem(last=False)
        return js

    @staticmethod
    def _client_trial(js: _JobStudy, client_id: str) -> int | None:
        return study_store.running_trial_with_attr(js.study, CLIENT_KEY, client_id)

    @staticmethod
    def _id_of(js: _JobStudy, job: Job, number: int) -> int:
        try:
            return study_store.trial_id_of_number(js.study, number)
        except KeyError as e:
            raise NotFoundError(f"job {job.id!r} has no trial {number}") from e

    def _running_id(self, js: _JobStudy, job: Job, number: int) -> int:
        trial_id = self._id_of(js, job, number)
        current = study_store.trial_state(js.study, trial_id)
        if current != TrialState.RUNNING:
            raise ConflictError(f"trial {number} of job {job.id!r} is {current.name.lower()}")
        return trial_id

    def _end_job_if_done(self, js: _JobStudy, job: Job) -> None:
        used = BudgetState.of(js.study, js.storage)
        if used.running or used.may_ask(js.n_trials, js.spec.budget.parallelism):
            return
        outcome = job_outcome(js.study, n_trials=js.n_trials, timed_out=False)
        assert outcome.status is not None
        self.jobs.finish(job.id, OWNER, outcome.status, outcome.error)
        with self._lock:
            self._studies.pop(job.id, None)
        logger.info("ask/tell job %s %s", job.id, outcome.status.value)


def _ordered(spec: JobSpec, values: Mapping[str, float]) -> list[float]:
    """The objectives' values in the job's order; a 422 naming what is missing or unknown."""
    keys = spec.metric_names
    missing = [k for k in keys if k not in values]
    unknown = sorted(set(values) - set(keys))
    if missing or unknown:
        raise InvalidSpecError(
            "values",
            f"give one value per objective ({', '.join(keys)})"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; not an objective: {', '.join(unknown)}" if unknown else ""),
        )
    return [float(values[k]) for k in keys]


def _why_not(used: BudgetState, js: _JobStudy) -> str:
    if used.running >= js.spec.budget.parallelism:
        return (f"the job runs {used.running} trials, its parallelism; ask again when one "
                "has been told")
    if used.counted + used.running >= js.n_trials:
        return (f"the job has asked all of its {js.n_trials} trials; {used.running} still "
                "run")
    return "the job's first trials all failed; it asks no more"
