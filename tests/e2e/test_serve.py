"""End to end: a real `edgetune serve` process, jobs submitted through the SDK."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import optuna
import pytest
from optuna.trial import TrialState

from edgetune.cli import free_port
from edgetune.client import Client

pytestmark = pytest.mark.slow

THREE_OBJECTIVES = {
    "name": "e2e-three",
    "trainer": {"name": "image-classifier", "dataset": "digits", "epochs": 2},
    "space": {"name": "cnn"},
    "objectives": [
        {"name": "accuracy", "direction": "maximize"},
        {"name": "latency_ms", "device": "local"},
        {"name": "size_bytes"},
    ],
    "algorithm": {"sampler": "nsga2", "pruner": "none"},
    "budget": {"n_trials": 8, "parallelism": 2},
    "seed": 1,
}


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def test_three_objective_job_end_to_end(server) -> None:
    with Client(server.url) as client:
        job = client.submit(THREE_OBJECTIVES)
        assert job.status == "queued"
        seen: list[str] = []
        job = client.wait(job.id, timeout=400, poll_interval=0.5,
                          progress=lambda j: seen.append(j.status))
        assert job.status == "succeeded", f"{job.error}\n{server.log_tail()}"
        assert "running" in seen
        assert job.progress.complete + job.progress.pruned == 8
        assert job.progress.failed == 0

        trials = client.trials(job.id).data
        assert len(trials) == 8
        assert all(t.state in ("complete", "pruned") for t in trials)
        complete = [t for t in trials if t.state == "complete"]
        keys = ["accuracy", "latency_ms@local", "size_bytes"]
        for t in complete:
            assert t.values is not None and set(t.values) == set(keys)
            assert 0 <= t.values["accuracy"] <= 1
            assert t.values["latency_ms@local"] > 0
            assert t.values["size_bytes"] > 0
            assert t.metrics["params"] > 0
            assert len(t.user_attrs["artifact"]["sha256"]) == 64
            assert (server.data_dir / "artifacts").is_dir()

        front = client.pareto(job.id)
        assert front.front_size == len(front.data) >= 1
        assert [o.name for o in front.objectives] == keys
        lower_better = {
            t.number: [-t.values["accuracy"], t.values["latency_ms@local"], t.values["size_bytes"]]
            for t in complete
            if t.values is not None
        }
        front_numbers = {t.number for t in front.data}
        for t in front.data:
            assert set(t.values) == set(keys) and t.rank == 0
            assert not any(dominates(other, lower_better[t.number])
                           for other in lower_better.values())
        # Every trial left out is dominated by one on the front.
        for number, values in lower_better.items():
            if number not in front_numbers:
                assert any(dominates(lower_better[n], values) for n in front_numbers)

        everything = client.pareto(job.id, include_dominated=True)
        assert len(everything.data) == len(complete)

    study = optuna.load_study(study_name=job.study_name, storage=server.database_url)
    assert study.metric_names == keys
    loaded = study.get_trials(deepcopy=False)
    assert len(loaded) == 8
    assert {t.number: t.state for t in loaded} == {
        t.number: TrialState[t.state.upper()] for t in trials
    }
    assert {t.number: t.params for t in loaded} == {t.number: t.params for t in trials}

    check_dashboard_reads(server, job.study_name, keys, n_trials=8)


def check_dashboard_reads(server, study_name: str, keys: list[str], *, n_trials: int) -> None:
    """`edgetune dashboard` serves the same study through optuna-dashboard's own API."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "edgetune", "dashboard", "--data-dir", str(server.data_dir),
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 60
        summaries = None
        while time.monotonic() < deadline and summaries is None:
            try:
                summaries = httpx.get(f"{base}/studies", timeout=5).json()["study_summaries"]
            except httpx.HTTPError:
                time.sleep(0.3)
        assert summaries is not None, "optuna-dashboard did not answer"
        (summary,) = [s for s in summaries if s["study_name"] == study_name]
        detail = httpx.get(f"{base}/studies/{summary['study_id']}", params={"after": 0},
                           timeout=10).json()
        assert detail["objective_names"] == keys
        assert len(detail["trials"]) == n_trials
        assert {a["key"] for a in detail["union_user_attrs"]} >= {"size_bytes", "params"}
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_job_whose_trials_all_fail_ends_failed_with_reason(server, tmp_path) -> None:
    spec = {
        "name": "e2e-fails",
        "trainer": {"dataset": "mnist", "epochs": 1, "options": {"data_dir": str(tmp_path)}},
        "objectives": [{"name": "accuracy"}],
        "algorithm": {"sampler": "random"},
        "budget": {"n_trials": 40},
    }
    with Client(server.url) as client:
        job = client.wait(client.submit(spec).id, timeout=300, poll_interval=0.5)
        assert job.status == "failed"
        assert job.error is not None and "MNIST files not found" in job.error
        assert "stopped early" in job.error
        assert job.progress.failed == 5  # not the whole budget of 40
        trials = client.trials(job.id).data
        assert all(t.state == "fail" and "MNIST" in (t.error or "") for t in trials)


def test_cancel_stops_a_running_job(server) -> None:
    spec = {
        "name": "e2e-cancel",
        "trainer": {"epochs": 30},
        "objectives": [{"name": "accuracy"}],
        "algorithm": {"sampler": "random"},
        "budget": {"n_trials": 100},
    }
    with Client(server.url) as client:
        job = client.submit(spec)
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            job = client.get(job.id)
            if job.status == "running" and job.progress.running >= 1:
                break
            time.sleep(0.3)
        assert job.status == "running", server.log_tail()
        client.cancel(job.id)
        job = client.wait(job.id, timeout=60, poll_interval=0.3)
        assert job.status == "cancelled"
        assert job.progress.running == 0
        assert job.progress.finished < 100
