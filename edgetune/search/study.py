"""A job's study and the rules of a job's life, in one place for every way trials run.

`ResolvedJob` is the job made ready once (the spec parsed, the space resolved, the budget in
trials): plain data that crosses to a trial's process as is. `JobStudy` is a resolved job with
its Optuna study loaded (the sampler and pruner the spec names): it asks trials, tells their
`TrialOutcome`, counts the budget, fails the trials of dead workers and says how the job
ended. The process-pool backend, the Ray backend and ask/tell are adapters over it.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from edgetune.errors import TrialFailed, TrialPruned
from edgetune.search import one_shot
from edgetune.spaces import Param, ParamValue, resolve_space
from edgetune.spec import JobSpec
from edgetune.storage import JobStatus, optuna_storage, study_store, utcnow
from edgetune.storage.study_store import ERROR_ATTR, INFRA_FAILURE_KEY, ONE_SHOT_ATTR

if TYPE_CHECKING:
    import optuna
    from optuna.trial import TrialState

    from edgetune.storage import Job
    from edgetune.trainers import Trainer

logger = logging.getLogger(__name__)

#: A job stops starting trials when this many have ended and every one of them failed.
MAX_INITIAL_FAILURES = 5
#: The user attribute holding the parameters a trial ran with that the sampler did not draw
#: (fixed ones): the API shows them with the sampled ones.
FIXED_PARAMS_ATTR = "fixed_params"


class OutcomeState(enum.Enum):
    """How a trial ended, as a backend or a client tells it."""

    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial measured and how it ended. `infra` marks a failure of the infrastructure
    (a dead worker, a cancelled job), which frees the trial's budget and grid point."""

    state: OutcomeState
    metrics: Mapping[str, float] = field(default_factory=dict)
    user_attrs: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    infra: bool = False

    @classmethod
    def failed(cls, error: str, *, infra: bool = False, traceback: str | None = None,
               ) -> TrialOutcome:
        return cls(OutcomeState.FAILED, error=error, infra=infra, traceback=traceback)

    @classmethod
    def pruned(cls, details: Mapping[str, Any]) -> TrialOutcome:
        """From `TrialPruned`'s payload: {"metrics": ..., "user_attrs": ...}."""
        return cls(OutcomeState.PRUNED, metrics=dict(details.get("metrics", {})),
                   user_attrs=dict(details.get("user_attrs", {})))

    def with_attrs(self, **attrs: Any) -> TrialOutcome:
        return replace(self, user_attrs={**self.user_attrs, **attrs})

    def to_json(self) -> str:
        return json.dumps({"state": self.state.value, "metrics": dict(self.metrics),
                           "user_attrs": dict(self.user_attrs), "error": self.error,
                           "traceback": self.traceback, "infra": self.infra}, default=str)

    @classmethod
    def from_json(cls, text: str) -> TrialOutcome:
        raw = json.loads(text)
        return cls(OutcomeState(raw["state"]), metrics=raw.get("metrics") or {},
                   user_attrs=raw.get("user_attrs") or {}, error=raw.get("error"),
                   traceback=raw.get("traceback"), infra=bool(raw.get("infra")))


def run_trial(train: Callable[[], TrialOutcome]) -> TrialOutcome:
    """Call `train`, and turn what it raises into the outcome a backend tells; the CPU seconds
    it took (every thread of this process) are its `cpu_s` attribute."""
    started = time.process_time()
    try:
        outcome = train()
    except TrialPruned as e:
        outcome = TrialOutcome.pruned(e.args[0])
    except TrialFailed as e:
        outcome = TrialOutcome.failed(str(e))
    except Exception as e:
        outcome = TrialOutcome.failed(f"{type(e).__name__}: {e}",
                                      traceback=traceback.format_exc(limit=20))
    return outcome.with_attrs(cpu_s=round(time.process_time() - started, 3))


class JobControl(Protocol):
    """What a backend asks its worker between steps of a job."""

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


@dataclass(frozen=True)
class Budget:
    """How much of a job's budget its study has used, read under the job's lock."""

    counted: int  # finished trials that use budget (not infrastructure failures)
    succeeded: int  # of those, the ones that did not fail
    running: int
    n_trials: int
    parallelism: int

    @property
    def hopeless(self) -> bool:
        # A spec that makes every trial fail (a missing dataset, a bad option) should not
        # burn its whole budget: stop asking once the first few all failed.
        return self.succeeded == 0 and self.counted >= MAX_INITIAL_FAILURES

    @property
    def spent(self) -> bool:
        """No trial may start any more: all are asked, or the first ones all failed."""
        return self.hopeless or self.counted + self.running >= self.n_trials

    def may_ask(self) -> bool:
        return not self.spent and self.running < self.parallelism

    def why_not(self) -> str:
        """Why `may_ask` is False, for a client that asked."""
        if self.running >= self.parallelism:
            return (f"the job runs {self.running} trials, its parallelism; ask again when one "
                    "has been told")
        if self.counted + self.running >= self.n_trials:
            return (f"the job has asked all of its {self.n_trials} trials; {self.running} "
                    "still run")
        return "the job's first trials all failed; it asks no more"


@dataclass(frozen=True)
class ResolvedJob:
    """A job made ready once: plain data, sent as is to a trial's process."""

    job_id: str
    tenant: str
    study_name: str
    spec: JobSpec
    space: list[Param]
    n_trials: int
    started_at: datetime | None = None

    @classmethod
    def of(cls, job: Job, spec: JobSpec | None = None) -> ResolvedJob:
        from edgetune.search.registry import SAMPLERS

        spec = spec if spec is not None else job.spec
        space = resolve_space(spec.space.name, spec.space.params)
        max_trials = SAMPLERS[spec.algorithm.sampler].max_trials
        n = spec.budget.n_trials
        return cls(job_id=job.id, tenant=job.tenant, study_name=job.study_name, spec=spec,
                   space=space, n_trials=n if max_trials is None else min(n, max_trials(space)),
                   started_at=job.started_at)

    @property
    def metric_names(self) -> list[str]:
        return self.spec.metric_names

    @property
    def deadline(self) -> datetime | None:
        timeout = self.spec.budget.timeout_s
        return (self.started_at + timedelta(seconds=timeout)
                if timeout and self.started_at else None)

    def timed_out(self) -> bool:
        deadline = self.deadline
        return deadline is not None and utcnow() >= deadline

    def trainer_class(self) -> type[Trainer]:
        from edgetune.trainers import get_trainer_class

        return get_trainer_class(self.spec.trainer.name)

    def progress_keys(self) -> list[str | None]:
        """Per objective, the metric the trainer reports each epoch for it (None: none)."""
        from edgetune.search.registry import progress_metric

        reported = self.trainer_class().progress_metrics
        return [progress_metric(o.name, reported) for o in self.spec.objectives]

    def load_study(
        self, storage: str | optuna.storages.BaseStorage, *, sampler: bool = True,
        pruner: bool = True,
    ) -> optuna.Study:
        """The job's study with the sampler (seeded per trial number: `TrialSeededSampler`)
        and the pruner the spec names (on the optuna backend); `sampler=False` for a process
        whose trials are sampled already."""
        import optuna

        from edgetune.search.constraints import violations
        from edgetune.search.registry import PRUNERS, SAMPLERS, AlgorithmContext
        from edgetune.search.samplers import TrialSeededSampler

        spec = self.spec
        constraints_func = None
        if spec.constraints:
            constraints = list(spec.constraints)

            def constraints_func(t: optuna.trial.FrozenTrial) -> list[float]:
                return violations(constraints, t.user_attrs)

        entry = SAMPLERS[spec.algorithm.sampler]
        ctx = AlgorithmContext(
            spec, self.space, constraints_func=constraints_func if entry.constraints else None
        )

        def build_sampler(seed: int | None) -> optuna.samplers.BaseSampler:
            return entry.build(replace(ctx, spec=spec.model_copy(update={"seed": seed})))

        build_pruner = PRUNERS[spec.algorithm.pruner].optuna if pruner else None
        return optuna.load_study(
            study_name=self.study_name,
            storage=optuna_storage(storage) if isinstance(storage, str) else storage,
            sampler=(TrialSeededSampler(build_sampler, seed=spec.seed) if sampler
                     else optuna.samplers.RandomSampler()),
            pruner=build_pruner(ctx) if build_pruner is not None else None,
        )


@dataclass(frozen=True)
class AskedTrial:
    """A trial asked of the study, with every parameter it runs with (fixed ones too)."""

    trial: optuna.Trial
    params: dict[str, ParamValue]
    #: In a one-shot job, what the trial does (`search.one_shot.Stage`'s value).
    one_shot: str | None = None

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def trial_id(self) -> int:
        return study_store.trial_id(self.trial)


class JobStudy:
    """A resolved job and its loaded study: the one place where trials are asked and told."""

    def __init__(self, job: ResolvedJob, study: optuna.Study) -> None:
        self.job = job
        self.study = study

    @classmethod
    def load(cls, job: Job | ResolvedJob, storage: str | optuna.storages.BaseStorage, *,
             spec: JobSpec | None = None) -> JobStudy:
        resolved = job if isinstance(job, ResolvedJob) else ResolvedJob.of(job, spec)
        return cls(resolved, resolved.load_study(storage))

    @property
    def spec(self) -> JobSpec:
        return self.job.spec

    @property
    def space(self) -> list[Param]:
        return self.job.space

    # --- asking ------------------------------------------------------------------------------
    def budget(self) -> Budget:
        counts = study_store.trial_counts(self.study)
        return Budget(counted=counts.counted, succeeded=counts.succeeded,
                      running=counts.running, n_trials=self.job.n_trials,
                      parallelism=self.spec.budget.parallelism)

    def new_trial(self) -> int | None:
        """A new trial's id, with its first heartbeat, or None when the budget says no more
        (or a one-shot job waits for its evaluations to end). Call it under the job's lock,
        which guards the slot; sample after it (`sample`). None too once the job's time budget
        has run out: no trial starts after it, on any backend or through ask/tell."""
        if self.job.timed_out() or not self.budget().may_ask():
            return None
        planned = None
        if self.spec.algorithm.one_shot is not None:
            planned = self._one_shot_plan()
            if planned is None:
                return None
        trial_id = study_store.create_trial(self.study)
        if planned is not None:
            study_store.set_user_attr(self.study, trial_id, ONE_SHOT_ATTR, planned.stage.value)
            if planned.params is not None:
                study_store.fix_params(self.study, trial_id, planned.params)
        return trial_id

    def _one_shot_plan(self) -> one_shot.Planned | None:
        trials = study_store.all_trials(self.study)
        return one_shot.plan_next(self.spec, self.job.n_trials, trials)

    def sample(self, trial_id: int, *, note_fixed: bool = True) -> AskedTrial:
        """The trial's parameters from the sampler; the fixed ones are noted on the trial."""
        from edgetune.search.space import suggest

        trial = study_store.sampled_trial(self.study, trial_id)
        params = suggest(trial, self.space)
        fixed = {k: v for k, v in params.items() if k not in trial.params}
        if fixed and note_fixed:
            study_store.set_user_attr(self.study, trial_id, FIXED_PARAMS_ATTR, fixed)
        stage = (trial.user_attrs.get(ONE_SHOT_ATTR)
                 if self.spec.algorithm.one_shot is not None else None)
        return AskedTrial(trial, params, one_shot=stage)

    def ask(self) -> AskedTrial | None:
        """`new_trial` and `sample` at once, for a caller that holds no lock of its own."""
        trial_id = self.new_trial()
        return None if trial_id is None else self.sample(trial_id)

    def heartbeat(self, trial_id: int) -> None:
        study_store.record_heartbeat(self.study, trial_id)

    def reap_dead(self) -> None:
        """Fail the trials whose worker died (under the job's lock), so others run again."""
        study_store.fail_dead_trials(self.study)

    def fail_leftovers(self) -> None:
        """Fail every running trial: the caller holds the job's lease, so they were left by a
        worker that died."""
        study_store.fail_running_trials(self.study, "its worker died")

    # --- telling -----------------------------------------------------------------------------
    def tell(self, trial_id: int, outcome: TrialOutcome) -> TrialState:
        """Record the outcome on the trial and finish it, in one transaction; returns the state
        it ended in. A trial that is already finished (another worker took the job over and
        failed it as a leftover) is left as it is."""
        from optuna.trial import TrialState

        metrics = {k: float(v) for k, v in outcome.metrics.items()}
        attrs: dict[str, Any] = {**metrics, **outcome.user_attrs}
        state = outcome.state
        error = outcome.error
        if state == OutcomeState.COMPLETE:
            names = self.job.metric_names
            values = [metrics.get(key, math.nan) for key in names]
            missing = [k for k, v in zip(names, values, strict=True) if not math.isfinite(v)]
            if not missing:
                return study_store.finish_trial(self.study, trial_id, TrialState.COMPLETE,
                                                values, attrs)
            state, error = OutcomeState.FAILED, f"the trial did not measure {', '.join(missing)}"
        if state == OutcomeState.PRUNED:
            return study_store.finish_trial(self.study, trial_id, TrialState.PRUNED, None, attrs)
        attrs[ERROR_ATTR] = str(error)
        if outcome.traceback:
            attrs["traceback"] = outcome.traceback[-4000:]
        if outcome.infra:
            attrs[INFRA_FAILURE_KEY] = True
        return study_store.finish_trial(self.study, trial_id, TrialState.FAIL, None, attrs)

    # --- the end -----------------------------------------------------------------------------
    def outcome(self) -> JobOutcome:
        """How the job ended, from its trials (the budget spent, or the time)."""
        from optuna.trial import TrialState

        trials = [t for t in self.study.get_trials(deepcopy=False) if study_store.uses_budget(t)]
        if any(t.state == TrialState.COMPLETE for t in trials):
            return JobOutcome(JobStatus.SUCCEEDED)
        failed = [t for t in trials if t.state == TrialState.FAIL]
        if failed:
            first = failed[0]
            stopped = (" (the job stopped early: the first trials all failed)"
                       if len(trials) < self.job.n_trials else "")
            return JobOutcome(
                JobStatus.FAILED,
                f"all {len(failed)} trials failed{stopped}; trial {first.number}: "
                f"{first.user_attrs.get(ERROR_ATTR, 'no reason recorded')}",
            )
        if trials:
            return JobOutcome(JobStatus.FAILED, f"all {len(trials)} trials were pruned")
        if self.job.timed_out():
            return JobOutcome(JobStatus.FAILED, "the time budget ran out before any trial ended")
        return JobOutcome(JobStatus.FAILED, "no trial ran")

    def finished_count(self) -> int:
        """Trials that used up budget so far."""
        return self.budget().counted

    def why_no_trial(self) -> str:
        """Why `new_trial` gave none, for a client that asked."""
        if self.job.timed_out():
            return (f"the job's time budget of {self.spec.budget.timeout_s:g} s "
                    "(budget.timeout_s) has run out; it starts no more trials")
        return self.budget().why_not()

    def is_done(self) -> bool:
        """True when no trial runs and none may be asked: the job has ended."""
        used = self.budget()
        if used.running:
            return False
        if self.job.timed_out() or not used.may_ask():
            return True
        # A one-shot job with no trial running and no finalist left to train has ended, with
        # budget to spare when its evaluations found fewer distinct finalists.
        return self.spec.algorithm.one_shot is not None and self._one_shot_plan() is None

