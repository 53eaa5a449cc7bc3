"""`JobStudy`, the one place a job's trials are asked and told, in-process on a real database:
the rules every backend and ask/tell share (budget, the initial-failure stop, fixed params,
outcomes), and a resolved job that crosses to a trial's process as is."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import timedelta
from pathlib import Path

import pytest
from optuna.trial import TrialState

from edgetune.search.study import (
    MAX_INITIAL_FAILURES,
    JobStudy,
    OutcomeState,
    ResolvedJob,
    TrialOutcome,
)
from edgetune.spec import JobSpec
from edgetune.storage import JobRepository, JobStatus, open_database
from edgetune.storage.study_store import INFRA_FAILURE_KEY


@pytest.fixture
def jobs(tmp_path: Path):
    db = open_database(f"sqlite:///{tmp_path / 'edgetune.db'}")
    yield JobRepository(db)
    db.dispose()


def _job_study(jobs: JobRepository, **spec: object) -> JobStudy:
    s = JobSpec.model_validate({"name": "s", "seed": 0, "mode": "ask-tell", **spec})
    job = jobs.create(s)
    return JobStudy.load(job, jobs.db.url)


SPACE = {"params": [{"type": "float", "name": "lr", "low": 0.001, "high": 0.1, "log": True},
                    {"type": "fixed", "name": "epochs", "value": 2}]}


def test_ask_tell_and_the_budget(jobs: JobRepository) -> None:
    study = _job_study(jobs, space=SPACE, budget={"n_trials": 2, "parallelism": 2})
    first, second = study.ask(), study.ask()
    assert first is not None and second is not None and study.ask() is None  # the budget
    assert first.params["epochs"] == 2 and 0.001 <= float(first.params["lr"]) <= 0.1
    trial = study.study.trials[0]
    assert trial.user_attrs["fixed_params"]["epochs"] == 2
    assert study.budget().running == 2
    done = study.tell(first.trial_id, TrialOutcome(OutcomeState.COMPLETE,
                                                   metrics={"accuracy": 0.9}))
    assert done == TrialState.COMPLETE
    # A complete outcome missing an objective fails, naming what is missing.
    missed = study.tell(second.trial_id, TrialOutcome(OutcomeState.COMPLETE, metrics={}))
    assert missed == TrialState.FAIL
    assert "did not measure accuracy" in study.study.trials[1].user_attrs["error"]
    assert study.is_done() and study.outcome().status == JobStatus.SUCCEEDED


def test_no_trial_starts_once_the_time_budget_has_run_out(jobs: JobRepository) -> None:
    """The deadline is the job's rule, so ask/tell keeps it too (it used to ask on)."""
    study = _job_study(jobs, space=SPACE, budget={"n_trials": 5, "timeout_s": 60})
    asked = study.ask()
    assert asked is not None and study.job.started_at is not None
    study.job = dataclasses.replace(study.job,
                                    started_at=study.job.started_at - timedelta(hours=1))
    assert study.ask() is None
    assert "time budget of 60 s (budget.timeout_s) has run out" in study.why_no_trial()
    assert not study.is_done()  # a trial still runs
    study.tell(asked.trial_id, TrialOutcome(OutcomeState.COMPLETE, metrics={"accuracy": 0.5}))
    assert study.is_done() and study.outcome().status == JobStatus.SUCCEEDED


def test_infrastructure_failures_use_no_budget_and_the_first_failures_stop_the_job(
    jobs: JobRepository,
) -> None:
    study = _job_study(jobs, space=SPACE, budget={"n_trials": 20, "parallelism": 1})
    asked = study.ask()
    assert asked is not None
    study.tell(asked.trial_id, TrialOutcome.failed("its worker died", infra=True))
    assert study.study.trials[0].user_attrs[INFRA_FAILURE_KEY] is True
    assert study.budget().counted == 0
    for _ in range(MAX_INITIAL_FAILURES):
        asked = study.ask()
        assert asked is not None
        study.tell(asked.trial_id, TrialOutcome.failed("diverged"))
    assert study.ask() is None and study.budget().hopeless
    outcome = study.outcome()
    assert outcome.status == JobStatus.FAILED and "the first trials all failed" in str(
        outcome.error)


def test_the_resolved_job_and_an_outcome_cross_process_boundaries(jobs: JobRepository) -> None:
    study = _job_study(jobs, space=SPACE)
    resolved = pickle.loads(pickle.dumps(study.job))
    assert resolved == study.job and isinstance(resolved, ResolvedJob)
    outcome = TrialOutcome(OutcomeState.PRUNED, metrics={"accuracy": 0.5},
                           user_attrs={"pruned_at_epoch": 1}).with_attrs(node="a")
    assert TrialOutcome.from_json(outcome.to_json()) == outcome
    assert pickle.loads(pickle.dumps(outcome)) == outcome
