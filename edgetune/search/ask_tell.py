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

from edgetune.errors import ConflictError, NotFoundError
from edgetune.search.schedulers import report_progress
from edgetune.search.study import JobStudy, OutcomeState, TrialOutcome
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
    study: JobStudy
    storage: optuna.storages.RDBStorage
    lock: threading.Lock = field(default_factory=threading.Lock)
    reaped_at: float = 0.0

    @property
    def spec(self) -> JobSpec:
        return self.study.spec


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
                trial_id = study_store.running_trial_with_attr(js.study.study, CLIENT_KEY,
                                                               client_id)
                resumed = trial_id is not None
                if trial_id is not None:
                    js.study.heartbeat(trial_id)
                else:
                    if time.monotonic() - js.reaped_at >= self.heartbeat_s:
                        js.study.reap_dead()
                        js.reaped_at = time.monotonic()
                    trial_id = js.study.new_trial()
                    if trial_id is None:
                        reason = js.study.why_no_trial()
                        if js.study.job.timed_out():  # else the last tell has ended it
                            self._end_job_if_done(js, job)
                        raise ConflictError(reason)
                    study_store.set_system_attr(js.study.study, trial_id, CLIENT_KEY, client_id)
            asked = js.study.sample(trial_id, note_fixed=not resumed)
        return AskedTrial(number=asked.number, params=asked.params, resumed=resumed)

    def report(self, job: Job, number: int, step: int, values: Mapping[str, float]) -> bool:
        """Record a running trial's progress; True when the job's pruner says stop it."""
        js = self._study(job)
        trial_id = self._running_id(js, job, number)
        js.study.heartbeat(trial_id)
        study = js.study.study
        if js.spec.algorithm.pruner == "none":
            # The names are checked all the same: a 422 for one that is no objective's.
            js.spec.objective_values(values, every=False)
            if len(js.spec.objectives) == 1:  # kept for the learning curves all the same
                optuna.Trial(study, trial_id).report(_ordered(js.spec, values)[0], step)
            return False
        return report_progress(study, trial_id, step, _ordered(js.spec, values))

    def tell(
        self, job: Job, number: int, state: Literal["complete", "pruned", "failed"],
        values: Mapping[str, float], metrics: Mapping[str, float], error: str | None,
    ) -> TrialState:
        """Finish a trial (telling a finished one again changes nothing) and end the job once
        its budget is spent and no trial runs."""
        js = self._study(job)
        trial_id = self._id_of(js, job, number)
        # By objective key (a plain metric name will do); every objective when complete, or
        # a 422 before anything is stored.
        values = js.spec.objective_values(values, every=state == "complete")
        outcome = TrialOutcome(OutcomeState(state), metrics={**metrics, **values}, error=error)
        ended = js.study.tell(trial_id, outcome)
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
        storage = optuna_storage(self.jobs.db.url, heartbeat_s=self.heartbeat_s)
        js = _JobStudy(study=JobStudy.load(job, storage), storage=storage)
        with self._lock:
            js = self._studies.setdefault(job.id, js)
            while len(self._studies) > self.max_jobs:
                self._studies.popitem(last=False)
        return js

    @staticmethod
    def _id_of(js: _JobStudy, job: Job, number: int) -> int:
        try:
            return study_store.trial_id_of_number(js.study.study, number)
        except KeyError as e:
            raise NotFoundError(f"job {job.id!r} has no trial {number}") from e

    def _running_id(self, js: _JobStudy, job: Job, number: int) -> int:
        trial_id = self._id_of(js, job, number)
        current = study_store.trial_state(js.study.study, trial_id)
        if current != TrialState.RUNNING:
            raise ConflictError(f"trial {number} of job {job.id!r} is {current.name.lower()}")
        return trial_id

    def _end_job_if_done(self, js: _JobStudy, job: Job) -> None:
        if not js.study.is_done():
            return
        outcome = js.study.outcome()
        assert outcome.status is not None
        self.jobs.finish(job.id, OWNER, outcome.status, outcome.error)
        with self._lock:
            self._studies.pop(job.id, None)
        logger.info("ask/tell job %s %s", job.id, outcome.status.value)


def _ordered(spec: JobSpec, values: Mapping[str, float]) -> list[float]:
    """The objectives' values in the job's order; a 422 naming what is missing or unknown."""
    return [float(v) for v in spec.objective_values(values).values()]
