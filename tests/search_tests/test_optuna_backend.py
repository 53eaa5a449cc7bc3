"""The Optuna backend with real trial processes on a real SQLite study."""

from __future__ import annotations

import os
import signal
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from edgetune.devices import MeasureConfig
from edgetune.search.backends import OptunaBackend
from edgetune.spec import JobSpec
from edgetune.storage import JobRepository, JobStatus, open_database
from edgetune.storage.trials import INFRA_FAILURE_KEY, trial_state_counts

pytestmark = pytest.mark.slow


class Control:
    def __init__(self) -> None:
        self.stop = threading.Event()
        self.cancel = threading.Event()

    def heartbeat(self) -> bool:
        return True

    def cancel_requested(self) -> bool:
        return self.cancel.is_set()

    def should_stop(self) -> bool:
        return self.stop.is_set()


@pytest.fixture
def setup(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'edgetune.db'}")
    backend = OptunaBackend(
        storage_url=db.url, artifact_dir=str(tmp_path / "artifacts"),
        latency=MeasureConfig(min_repeats=5, min_time_s=0.0), poll_interval_s=0.1,
    )
    yield JobRepository(db), backend
    db.dispose()


def make_job(jobs: JobRepository, **spec):
    s = JobSpec.model_validate({"name": "b", "seed": 0, **spec})
    jobs.create(s)
    job = jobs.claim("test", lease_s=600)
    assert job is not None
    return job, s


def study_of(jobs: JobRepository, job) -> optuna.Study:
    return optuna.load_study(study_name=job.study_name, storage=jobs.db.url)


def test_median_pruner_sees_every_epoch(setup) -> None:
    jobs, backend = setup
    job, spec = make_job(jobs, trainer={"epochs": 3},
                         algorithm={"sampler": "tpe", "pruner": "median"},
                         budget={"n_trials": 5})
    outcome = backend.run(job, spec, Control())
    assert outcome.status == JobStatus.SUCCEEDED
    trials = study_of(jobs, job).get_trials()
    assert len(trials) == 5
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == [1, 2, 3]
            assert t.values[0] == pytest.approx(t.intermediate_values[3])


def test_a_killed_trial_process_fails_that_trial_only(setup) -> None:
    jobs, backend = setup
    job, spec = make_job(jobs, trainer={"epochs": 40}, algorithm={"sampler": "random"},
                         objectives=[{"name": "accuracy"}, {"name": "size_bytes"}],
                         budget={"n_trials": 2})
    storage_study = study_of(jobs, job)

    def kill_first_trial() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = storage_study.get_trials(states=(TrialState.RUNNING,))
            if running and "pid" in running[0].user_attrs:
                time.sleep(1.0)  # let it get into training
                os.kill(running[0].user_attrs["pid"], signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_trial)
    killer.start()
    outcome = backend.run(job, spec, Control())
    killer.join()
    assert outcome.status == JobStatus.SUCCEEDED
    trials = sorted(study_of(jobs, job).get_trials(), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "killed by SIGKILL" in trials[0].user_attrs["error"]


def test_leftover_running_trials_are_failed_and_do_not_use_budget(setup) -> None:
    jobs, backend = setup
    job, spec = make_job(jobs, trainer={"epochs": 1}, algorithm={"sampler": "random"},
                         budget={"n_trials": 1})
    study_of(jobs, job).ask()  # as if a worker died while running trial 0
    outcome = backend.run(job, spec, Control())
    assert outcome.status == JobStatus.SUCCEEDED
    trials = sorted(study_of(jobs, job).get_trials(), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs[INFRA_FAILURE_KEY] is True


def test_stop_hands_the_job_back_with_no_trial_left_running(setup) -> None:
    jobs, backend = setup
    job, spec = make_job(jobs, trainer={"epochs": 200}, algorithm={"sampler": "random"},
                         budget={"n_trials": 3})
    control = Control()

    def stop_once_a_trial_runs() -> None:
        # Not after a fixed time: the worker's warm-up alone can take seconds on a busy machine.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not study_of(jobs, job).get_trials(
                states=(TrialState.RUNNING,)):
            time.sleep(0.2)
        time.sleep(1.0)
        control.stop.set()

    threading.Thread(target=stop_once_a_trial_runs, daemon=True).start()
    outcome = backend.run(job, spec, control)
    assert outcome.status is None
    trials = study_of(jobs, job).get_trials()
    assert trials and all(t.state == TrialState.FAIL for t in trials)
    assert all(t.user_attrs[INFRA_FAILURE_KEY] for t in trials)
    counts = trial_state_counts(jobs.db, [job.study_name])[job.study_name]
    assert counts.get("FAIL", 0) == 0 and counts["FAIL_INFRA"] == len(trials)


def test_constraints_reach_the_sampler_and_the_trial(setup) -> None:
    jobs, backend = setup
    job, spec = make_job(jobs, trainer={"epochs": 1}, algorithm={"sampler": "nsga2"},
                         objectives=[{"name": "accuracy"}, {"name": "params"}],
                         constraints=[{"metric": "size_bytes", "op": "<=", "bound": 20000}],
                         budget={"n_trials": 3})
    assert backend.run(job, spec, Control()).status == JobStatus.SUCCEEDED
    for t in study_of(jobs, job).get_trials():
        (violation,) = t.system_attrs["constraints"]
        assert violation == pytest.approx(t.user_attrs["size_bytes"] - 20000)


def test_a_failing_worker_leaves_no_trial_running_and_no_child_alive(setup) -> None:
    jobs, backend = setup
    job, spec = make_job(jobs, trainer={"epochs": 200}, algorithm={"sampler": "random"},
                         budget={"n_trials": 4, "parallelism": 2})
    study = study_of(jobs, job)

    class Broken(Control):
        def cancel_requested(self) -> bool:
            # The database goes away once both trials are running.
            if len(study.get_trials(states=(TrialState.RUNNING,))) >= 2:
                raise RuntimeError("database gone")
            return False

    with pytest.raises(RuntimeError, match="database gone"):
        backend.run(job, spec, Broken())
    trials = study.get_trials()
    assert len(trials) == 2 and all(t.state == TrialState.FAIL for t in trials)
    for t in trials:
        with pytest.raises(ProcessLookupError):
            os.kill(t.user_attrs["pid"], 0)


def test_a_latency_constraint_prunes_a_too_slow_candidate_before_any_epoch(setup) -> None:
    jobs, backend = setup
    job, spec = make_job(
        jobs, trainer={"epochs": 3}, algorithm={"sampler": "random"}, budget={"n_trials": 2},
        objectives=[{"name": "accuracy"}],
        constraints=[{"metric": "latency_ms", "op": "<=", "bound": 1e-6}],  # nothing is this fast
    )
    outcome = backend.run(job, spec, Control())
    assert outcome.status == JobStatus.FAILED and "pruned" in (outcome.error or "")
    for t in study_of(jobs, job).get_trials():
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["pruned_at_epoch"] == 0
        assert "latency measured before training" in t.user_attrs["pruned_by"]
        assert t.user_attrs["latency@local"]["p50_ms"] > 1e-6
        # No epoch ran: none reported accuracy, none left a learning curve.
        assert not t.intermediate_values and "val_accuracy_history" not in t.user_attrs


def test_a_candidate_within_its_latency_constraint_trains(setup) -> None:
    jobs, backend = setup
    job, spec = make_job(
        jobs, trainer={"epochs": 1}, algorithm={"sampler": "random"}, budget={"n_trials": 1},
        constraints=[{"metric": "latency_ms", "op": "<=", "bound": 1000}],
    )
    assert backend.run(job, spec, Control()).status == JobStatus.SUCCEEDED
    (trial,) = study_of(jobs, job).get_trials()
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["latency_ms@local"] < 1000
