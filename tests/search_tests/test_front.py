"""FrontView: the ranked front of a job read from Optuna's tables, against the kernels."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution

from edgetune.search.front import FrontView
from edgetune.search.pareto import constrained_rank, hypervolume, reference_point
from edgetune.spec import JobSpec
from edgetune.storage import JobRepository, open_database

OBJECTIVES = [{"name": "accuracy"}, {"name": "latency_ms"}, {"name": "size_bytes"}]


def make_job(tmp_path, n: int, *, constraints=(), seed: int = 0, states=None):
    db = open_database(f"sqlite:///{tmp_path / 'e.db'}")
    spec = JobSpec.model_validate({"name": "front", "objectives": OBJECTIVES,
                                   "constraints": list(constraints),
                                   "algorithm": {"sampler": "nsga2"}})
    job = JobRepository(db).create(spec)
    study = optuna.load_study(study_name=job.study_name, storage=db.url)
    rng = np.random.default_rng(seed)
    values = np.column_stack([rng.integers(50, 100, n) / 100, rng.integers(1, 30, n) / 10,
                              rng.integers(1, 40, n) * 1000.0])
    for i, (acc, lat, size) in enumerate(values):
        state = (states or {}).get(i, optuna.trial.TrialState.COMPLETE)
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.01}, distributions={"lr": FloatDistribution(0.001, 0.1)},
            values=[acc, lat, size] if state == optuna.trial.TrialState.COMPLETE else None,
            state=state,
            user_attrs={"accuracy": acc, "latency_ms@local": lat, "size_bytes": size},
        ))
    return FrontView(db), job, spec, values


def lower_better(values: np.ndarray) -> np.ndarray:
    return values * np.array([-1.0, 1.0, 1.0])


def test_ranks_front_knee_and_hypervolume_match_the_kernels(tmp_path) -> None:
    view, job, spec, values = make_job(tmp_path, 120)
    everything = view.pareto(job.id, job.study_name, spec, include_dominated=True, limit=500)
    expected = constrained_rank(lower_better(values), None)
    assert {t.number: t.rank for t in everything.data} == dict(enumerate(expected.tolist()))
    ranks = [t.rank for t in everything.data]
    assert ranks == sorted(ranks)

    front = view.pareto(job.id, job.study_name, spec, limit=500)
    assert {t.number for t in front.data} == set(np.flatnonzero(expected == 0).tolist())
    assert front.count == front.front_size == len(front.data)
    assert sum(t.knee for t in front.data) == 1
    ref = reference_point(lower_better(values))
    assert front.reference_point == pytest.approx(
        {"accuracy": -ref[0], "latency_ms@local": ref[1], "size_bytes": ref[2]})
    assert front.hypervolume == pytest.approx(
        hypervolume(lower_better(values)[expected == 0], ref))
    assert all(t.hv_contribution is not None for t in front.data)

    page = view.pareto(job.id, job.study_name, spec, include_dominated=True, offset=10, limit=7)
    assert [t.number for t in page.data] == [t.number for t in everything.data[10:17]]
    assert page.count == 120


def test_constraints_put_feasible_trials_first(tmp_path) -> None:
    view, job, spec, values = make_job(
        tmp_path, 80, constraints=[{"metric": "size_bytes", "op": "<=", "bound": 15000}])
    violation = np.maximum(0, values[:, 2] - 15000)
    expected = constrained_rank(lower_better(values), violation)
    everything = view.pareto(job.id, job.study_name, spec, include_dominated=True, limit=500)
    assert {t.number: t.rank for t in everything.data} == dict(enumerate(expected.tolist()))
    front = view.pareto(job.id, job.study_name, spec)
    assert front.data and all(t.feasible and t.violation == 0 for t in front.data)
    infeasible = [t for t in everything.data if not t.feasible]
    assert infeasible and all(t.rank > 0 and t.hv_contribution is None for t in infeasible)


def test_when_nothing_is_feasible_the_least_violating_lead(tmp_path) -> None:
    view, job, spec, values = make_job(
        tmp_path, 30, constraints=[{"metric": "size_bytes", "op": "<=", "bound": 10}])
    front = view.pareto(job.id, job.study_name, spec)
    smallest = values[:, 2].min()
    assert front.data and all(t.values["size_bytes"] == smallest for t in front.data)
    assert front.hypervolume is None and not any(t.knee for t in front.data)


def test_subset_reference_and_history(tmp_path) -> None:
    view, job, spec, _ = make_job(
        tmp_path, 40, states={3: optuna.trial.TrialState.PRUNED, 7: optuna.trial.TrialState.FAIL})
    two = view.pareto(job.id, job.study_name, spec, objectives=["accuracy", "size_bytes"],
                      reference=[0.0, 50_000.0])
    assert [o.name for o in two.objectives] == ["accuracy", "size_bytes"]
    assert two.reference_point == {"accuracy": 0.0, "size_bytes": 50_000.0}
    assert two.n_complete == 38
    with pytest.raises(ValueError, match="reference has 1 values"):
        view.pareto(job.id, job.study_name, spec, reference=[1.0])
    with pytest.raises(ValueError, match="'params' is not an objective of the job"):
        view.pareto(job.id, job.study_name, spec, objectives=["params"])
    # A plain metric name stands for the one objective measuring it.
    by_name = view.pareto(job.id, job.study_name, spec, objectives=["accuracy", "latency_ms"])
    assert [o.name for o in by_name.objectives] == ["accuracy", "latency_ms@local"]

    history = view.hypervolume_history(job.id, job.study_name, spec).data
    assert len(history) == 38
    volumes = [h.hypervolume for h in history]
    assert volumes == sorted(volumes)
    assert volumes[-1] == pytest.approx(view.pareto(job.id, job.study_name, spec).hypervolume)


def test_cache_follows_new_completed_trials(tmp_path) -> None:
    view, job, spec, _ = make_job(tmp_path, 10)
    assert view.pareto(job.id, job.study_name, spec).n_complete == 10
    study = optuna.load_study(study_name=job.study_name, storage=view.db.url)
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 0.01}, distributions={"lr": FloatDistribution(0.001, 0.1)},
        values=[1.0, 0.01, 1.0]))
    after = view.pareto(job.id, job.study_name, spec)
    assert after.n_complete == 11 and [t.number for t in after.data] == [10]
