"""A one-shot job's plan on a real database: evaluations first, then the front's subnets as
finalists (fixed parameters), evaluations kept out of the Pareto front, and the spec's rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetune.errors import InvalidSpecError
from edgetune.search import validate_job_spec
from edgetune.search.front import FrontView
from edgetune.search.one_shot import Stage
from edgetune.search.study import JobStudy, OutcomeState, TrialOutcome
from edgetune.spec import JobSpec
from edgetune.storage import JobRepository, JobStatus, open_database
from edgetune.storage.study_store import ONE_SHOT_ATTR

SPEC = {
    "name": "one-shot", "seed": 0,
    "trainer": {"name": "image-classifier", "dataset": "digits", "epochs": 2},
    "space": {"name": "mobilenet"},
    "objectives": [{"name": "accuracy"}, {"name": "flops"}],
    "algorithm": {"sampler": "random", "one_shot": {"finalists": 2, "supernet_epochs": 1}},
    "budget": {"n_trials": 6, "parallelism": 6},
}


@pytest.fixture
def jobs(tmp_path: Path):
    db = open_database(f"sqlite:///{tmp_path / 'edgetune.db'}")
    yield JobRepository(db)
    db.dispose()


def _complete(study: JobStudy, trial_id: int, accuracy: float, flops: float) -> None:
    study.tell(trial_id, TrialOutcome(OutcomeState.COMPLETE,
                                      metrics={"accuracy": accuracy, "flops": flops}))


def test_evaluations_then_the_fronts_finalists(jobs: JobRepository) -> None:
    spec = JobSpec.model_validate(SPEC)
    job = jobs.create(spec)
    study = JobStudy.load(job, jobs.db.url)
    evals = [study.ask() for _ in range(4)]
    assert all(a is not None and a.one_shot == Stage.EVAL.value for a in evals)
    # Every evaluation is asked; the finalists wait until all of them have ended.
    assert study.ask() is None and not study.is_done()
    scores = [(0.90, 100.0), (0.80, 50.0), (0.70, 200.0), (0.85, 80.0)]  # #2 is dominated
    for asked, (accuracy, flops) in zip(evals[:3], scores[:3], strict=True):
        assert asked is not None
        _complete(study, asked.trial_id, accuracy, flops)
    assert study.ask() is None  # one evaluation still runs
    assert evals[3] is not None
    _complete(study, evals[3].trial_id, *scores[3])
    # The plan lives in the study: another worker (or this one, restarted) goes on from it.
    study = JobStudy.load(job, jobs.db.url)

    first, second = study.ask(), study.ask()
    assert first is not None and second is not None and study.ask() is None
    assert {first.one_shot, second.one_shot} == {Stage.FINETUNE.value}
    front = [evals[i] for i in (0, 1, 3)]
    # The two least crowded of the front's three: its extremes, 0.90 and 0.80 accuracy.
    assert [first.params, second.params] == [front[0].params, front[1].params]  # type: ignore[union-attr]
    for asked, accuracy in ((first, 0.97), (second, 0.95)):
        _complete(study, asked.trial_id, accuracy, 100.0 if asked is first else 50.0)
    assert study.is_done() and study.outcome().status == JobStatus.SUCCEEDED

    # The job's front holds the trained finalists only.
    pareto = FrontView(jobs.db).pareto(job.id, job.study_name, spec)
    assert sorted(t.number for t in pareto.data) == [first.number, second.number]
    stages = [t.user_attrs[ONE_SHOT_ATTR] for t in study.study.trials]
    assert stages == ["eval"] * 4 + ["finetune"] * 2


def test_an_evaluation_lost_to_the_infrastructure_is_asked_again(jobs: JobRepository) -> None:
    spec = JobSpec.model_validate({**SPEC, "budget": {"n_trials": 3, "parallelism": 1}})
    study = JobStudy.load(jobs.create(spec), jobs.db.url)
    asked = study.ask()
    assert asked is not None and asked.one_shot == Stage.EVAL.value
    study.tell(asked.trial_id, TrialOutcome.failed("its worker died", infra=True))
    again = study.ask()
    assert again is not None and again.one_shot == Stage.EVAL.value
    _complete(study, again.trial_id, 0.5, 10.0)
    final = study.ask()
    assert final is not None and final.one_shot == Stage.FINETUNE.value
    assert final.params == again.params


def test_fewer_distinct_subnets_than_finalists_ends_the_job(jobs: JobRepository) -> None:
    spec = JobSpec.model_validate({**SPEC, "budget": {"n_trials": 4, "parallelism": 1}})
    study = JobStudy.load(jobs.create(spec), jobs.db.url)
    for _ in range(2):
        asked = study.ask()
        assert asked is not None
        study.tell(asked.trial_id, TrialOutcome.failed("diverged"))
    # No evaluation completed: there is no finalist to train, and the job has ended.
    assert study.ask() is None and study.is_done()


@pytest.mark.parametrize(("change", "field"), [
    ({"trainer": {"name": "tabular-classifier", "dataset": "iris"}, "space": {"name": "mlp"}},
     "algorithm.one_shot"),
    ({"space": {"name": "resnet"}}, "space.name"),
    ({"algorithm": {"sampler": "random", "pruner": "median", "one_shot": {}}},
     "algorithm.pruner"),
    ({"budget": {"n_trials": 2}}, "budget.n_trials"),
])
def test_the_spec_rules(change: dict[str, object], field: str) -> None:
    spec = JobSpec.model_validate({**SPEC, **change})
    with pytest.raises(InvalidSpecError) as e:
        validate_job_spec(spec)
    assert e.value.field == field


def test_a_valid_one_shot_spec_passes() -> None:
    validate_job_spec(JobSpec.model_validate(SPEC))
