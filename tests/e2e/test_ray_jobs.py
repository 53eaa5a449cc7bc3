"""End to end on the ray backend: a real server whose worker starts a local Ray, real trainers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servers import RunningServer, start_server, stop_server
from specs import SMALL_SUPERNET

from edgetune.client import Client

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray at a time


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One worker: each worker process that runs a ray job starts a local Ray of its own."""
    running = start_server(tmp_path_factory.mktemp("ray-jobs"), workers=1)
    yield running
    stop_server(running)


def test_a_pbt_job_restarts_trials_from_checkpoints_with_new_parameters(server) -> None:
    """PBT on the `function` trainer, whose epochs cost nothing, so the test pays for Ray's
    scheduling alone: each epoch is checkpointed, and an exploited trial restarts from a better
    trial's checkpoint with perturbed parameters. (An image trainer's resume from its
    checkpoint is checked in tests/trainers_tests/test_trainer_compression.py; what PBT decides
    on given scores, in process, in tests/search_tests/test_contracts.py.)"""
    spec = {
        "name": "ray-pbt", "seed": 3,
        "trainer": {"name": "function", "dataset": "sphere", "epochs": 6},
        "space": {"name": None, "params": [
            {"type": "float", "name": f"x{i}", "low": 0, "high": 1} for i in range(2)]},
        "objectives": [{"name": "f1", "direction": "minimize"}],
        "algorithm": {"backend": "ray", "sampler": "random", "pruner": "pbt",
                      "options": {"perturbation_interval": 1}},
        "budget": {"n_trials": 4, "parallelism": 2},
    }
    with Client(server.url) as client:
        job = client.wait(client.submit(spec).id, timeout=600, poll_interval=0.5)
        assert job.status == "succeeded", f"{job.error}\n{server.log_tail()}"
        trials = client.trials(job.id).data
        failed = [(t.number, t.error) for t in trials if t.state != "complete"]
        assert len(trials) == 4 and not failed, f"{failed}\n{server.log_tail()}"
        # Exploits copy a better trial's parameters and perturb them: at least one trial ends
        # with parameters other than those it was asked with, still inside the space.
        changed = [t for t in trials if t.user_attrs["ray_params"] != t.params]
        assert changed
        for t in changed:
            assert all(0 <= t.user_attrs["ray_params"][f"x{i}"] <= 1 for i in range(2))
    # The run's checkpoints went with it: nothing resumes from them.
    assert not list((server.data_dir / "ray").iterdir())


def test_a_one_shot_job_on_ray_evaluates_then_trains_its_finalist(server) -> None:
    spec = {
        "name": "ray-one-shot", "seed": 5,
        "trainer": {"name": "image-classifier", "dataset": "digits", "epochs": 1,
                    "options": {"threads": 1}},
        "space": {"name": "mobilenet", "params": SMALL_SUPERNET},
        "objectives": [{"name": "accuracy"}, {"name": "flops"}],
        "algorithm": {"backend": "ray", "sampler": "random",
                      "one_shot": {"supernet_epochs": 1, "finalists": 1}},
        "budget": {"n_trials": 3, "parallelism": 2},
    }
    with Client(server.url) as client:
        job = client.wait(client.submit(spec).id, timeout=600, poll_interval=1.0)
        assert job.status == "succeeded", f"{job.error}\n{server.log_tail()}"
        trials = sorted(client.trials(job.id).data, key=lambda t: t.number)
        # The searcher waits for both evaluations before it asks for the finalist.
        assert [t.user_attrs["one_shot"] for t in trials] == ["eval", "eval", "finetune"]
        assert all(t.state == "complete" for t in trials)
        assert trials[2].params in [t.params for t in trials[:2]]
        assert [t.number for t in client.pareto(job.id).data] == [2]
        # Each trial, evaluation or finalist, exported its network from its Ray actor.
        for t in trials:
            artifact = client.download_artifact(job.id, t.number,
                                                server.data_dir / f"{t.number}.onnx")
            assert artifact.stat().st_size > 0


def test_one_worker_runs_ray_jobs_one_after_another_on_one_local_ray(server) -> None:
    """A local Ray's processes die with the thread that started them (PR_SET_PDEATHSIG): once
    started from a job's thread, every later ray job of that worker waited 60 s for a dead
    GCS, then the worker died and another took the job over."""
    spec = {
        "trainer": {"name": "function", "dataset": "sphere", "epochs": 2},
        "space": {"name": None, "params": [{"type": "float", "name": "x0", "low": 0,
                                            "high": 1}]},
        "objectives": [{"name": "f1", "direction": "minimize"}],
        "algorithm": {"backend": "ray", "sampler": "random"},
        "budget": {"n_trials": 2, "parallelism": 2},
    }
    with Client(server.url) as client:
        for name in ("ray-first", "ray-second"):
            job = client.wait(client.submit({**spec, "name": name}).id, timeout=300,
                              poll_interval=0.5)
            assert job.status == "succeeded", f"{job.error}\n{server.log_tail()}"
    log = server.log.read_text(errors="replace")
    assert "Failed to connect to GCS" not in log and "exited with code" not in log, log[-3000:]
