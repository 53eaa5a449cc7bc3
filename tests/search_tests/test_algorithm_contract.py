"""One end-to-end job per backend and number of objectives, through the API and a real
backend (the optuna backend's trial processes; a real local Ray, started once for the module),
on the `function` trainer (seconds). Each must leave a study where

- every trial's parameters lie in the space, and the job ran exactly its n_trials;
- completed trials have their values, and pruned ones are marked pruned before the last epoch;
- the same seed gives the same parameters (a rerun of the pruner-free jobs, where no
  scheduler timing can interfere);
- the Pareto endpoint ranks the result.

What each sampler, pruner and scheduler of the registry must do is checked for every one of
them, in process, by the contracts in tests/search_tests/test_contracts.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState
from servers import auth_headers

from edgetune.api import create_app
from edgetune.devices import MeasureConfig
from edgetune.search.backends import Backend, OptunaBackend, RunToEnd
from edgetune.settings import Settings
from edgetune.storage import JobRepository, JobStatus, open_database

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray at a time

N_TRIALS = 6
EPOCHS = 4
STEPS = [0.0, 0.25, 0.5, 0.75, 1.0]  # the values of x0..x3
SPACE = [{"type": "float", "name": f"x{i}", "low": 0, "high": 1, "step": 0.25} for i in range(4)]
#: (backend, sampler, pruner, objectives): early stopping with one objective, several
#: objectives without, on each backend. On ray, hyperband pauses and resumes trials from
#: their checkpoints; ASHA and PBT run in tests/e2e/test_ray_jobs.py.
SMOKE_JOBS = [
    ("optuna", "tpe", "sha", 1),
    ("optuna", "nsga2", "none", 2),
    ("ray", "random", "hyperband", 1),
    ("ray", "nsga2", "none", 2),
]
#: Pruners that must stop some of 6 trials of these problems with the seed below.
MUST_PRUNE = {"sha"}
#: sha measures where to put rungs on the job's complete trials; three of the six measure it
#: here (each trial in its own process, so the rungs come from the study).
OPTIONS = {"sha": {"min_trials_for_rungs": 3}}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("contract")
    settings = Settings(data_dir=data_dir)
    db = open_database(settings.url)
    latency = MeasureConfig(min_repeats=1, min_time_s=0.0)
    backends: dict[str, Backend] = {"optuna": OptunaBackend(
        storage_url=db.url, artifact_dir=str(settings.artifact_dir), latency=latency,
        poll_interval_s=0.05,
    )}
    with TestClient(create_app(settings), headers=auth_headers()) as client:
        yield {"client": client, "jobs": JobRepository(db), "backends": backends,
               "settings": settings, "db": db}
    if "ray" in backends:
        import ray

        ray.shutdown()
    db.dispose()


def backend_of(service: dict[str, Any], name: str) -> Backend:
    if name not in service["backends"]:
        from edgetune.search.backends.ray import RayBackend

        settings = service["settings"]
        service["backends"][name] = RayBackend(
            storage_url=service["db"].url, artifact_dir=str(settings.artifact_dir),
            latency=MeasureConfig(min_repeats=1, min_time_s=0.0),
        )
    backend: Backend = service["backends"][name]
    return backend


def run_job(
    service: dict[str, Any], backend: str, sampler: str, pruner: str, n_objectives: int
) -> tuple[str, optuna.Study]:
    spec = {
        "name": f"{backend}-{sampler}-{pruner}", "seed": 11,
        "trainer": {"name": "function", "dataset": "sphere" if n_objectives == 1 else "zdt1",
                    "epochs": EPOCHS},
        "space": {"name": None, "params": SPACE},
        "objectives": [{"name": f"f{k + 1}"} for k in range(n_objectives)],
        "algorithm": {"backend": backend, "sampler": sampler, "pruner": pruner,
                      "options": OPTIONS.get(pruner, {})},
        "budget": {"n_trials": N_TRIALS},
    }
    response = service["client"].post("/api/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    jobs: JobRepository = service["jobs"]
    job = jobs.claim("contract", lease_s=600)
    assert job is not None and job.id == job_id
    outcome = backend_of(service, backend).run(job, _spec(job), RunToEnd())
    assert outcome.status == JobStatus.SUCCEEDED, outcome.error
    jobs.finish(job.id, "contract", outcome.status, outcome.error)
    study = optuna.load_study(study_name=job.study_name, storage=service["db"].url)
    return job_id, study


def params_of(study: optuna.Study) -> list[dict[str, Any]]:
    return [t.params for t in sorted(study.trials, key=lambda t: t.number)]


@pytest.mark.parametrize(("backend", "sampler", "pruner", "n_objectives"), SMOKE_JOBS,
                         ids=["-".join(map(str, c)) for c in SMOKE_JOBS])
def test_a_job_end_to_end(
    service: dict[str, Any], backend: str, sampler: str, pruner: str, n_objectives: int
) -> None:
    job_id, study = run_job(service, backend, sampler, pruner, n_objectives)
    trials = study.trials
    assert len(trials) == N_TRIALS
    assert [t.number for t in trials] == list(range(N_TRIALS))
    for t in trials:
        assert set(t.params) == {f"x{i}" for i in range(4)}
        assert all(v in STEPS for v in t.params.values()), t.params
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), (t.state, t.user_attrs)
        if t.state == TrialState.COMPLETE:
            assert t.values is not None and len(t.values) == n_objectives
            assert all(t.user_attrs[f"f{k + 1}"] == v for k, v in enumerate(t.values))
        else:
            assert t.user_attrs["pruned_at_epoch"] < EPOCHS
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    if pruner in MUST_PRUNE:
        assert pruned > 0, [(t.number, t.params, t.intermediate_values) for t in trials]
    if pruner == "none":
        assert pruned == 0

    pareto = service["client"].get(f"/api/v1/jobs/{job_id}/pareto")
    assert pareto.status_code == 200, pareto.text
    front = pareto.json()
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    assert front["n_complete"] == len(completed)
    assert 0 < front["front_size"] == len(front["data"]) <= len(completed)
    assert all(row["rank"] == 0 for row in front["data"])

    if pruner == "none":
        _, again = run_job(service, backend, sampler, pruner, n_objectives)
        assert params_of(again) == params_of(study)


def test_a_ray_job_stops_when_cancelled(service: dict[str, Any]) -> None:
    spec = {"name": "cancel", "seed": 1,
            "trainer": {"name": "function", "dataset": "sphere", "epochs": 2},
            "space": {"name": None, "params": SPACE}, "objectives": [{"name": "f1"}],
            "algorithm": {"backend": "ray", "sampler": "random"},
            "budget": {"n_trials": 10_000}}
    assert service["client"].post("/api/v1/jobs", json=spec).status_code == 201
    job = service["jobs"].claim("contract", lease_s=600)
    control = RunToEnd()
    cancel = threading.Event()
    control.cancel_requested = cancel.is_set  # type: ignore[method-assign]
    threading.Timer(4.0, cancel.set).start()
    outcome = backend_of(service, "ray").run(job, _spec(job), control)
    assert outcome.status == JobStatus.CANCELLED
    study = optuna.load_study(study_name=job.study_name, storage=service["db"].url)
    states = {t.state for t in study.trials}
    assert TrialState.RUNNING not in states
    assert 0 < len(study.trials) < 10_000


def _spec(job: Any) -> Any:

    return job.spec
