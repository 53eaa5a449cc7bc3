"""End to end on the ray backend: a real server whose worker starts a local Ray, real trainers."""

from __future__ import annotations

import pytest
from specs import SMALL_SUPERNET

from edgetune.client import Client

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray at a time


def digits_job(name: str, pruner: str, n_trials: int = 4, **extra: object) -> dict:
    return {
        "name": name, "seed": 3,
        "trainer": {"name": "image-classifier", "dataset": "digits", "epochs": 3},
        "space": {"name": "cnn", "params": [{"type": "int", "name": "depth", "low": 1,
                                             "high": 2}]},
        "objectives": [{"name": "accuracy"}],
        "algorithm": {"backend": "ray", "sampler": "tpe", "pruner": pruner},
        "budget": {"n_trials": n_trials, "parallelism": 2},
        **extra,
    }


def test_an_asha_job_on_ray_lands_in_the_study_with_artifacts(server) -> None:
    with Client(server.url) as client:
        job = client.submit(digits_job("ray-asha", "asha"))
        job = client.wait(job.id, timeout=600, poll_interval=1.0)
        assert job.status == "succeeded", f"{job.error}\n{server.log_tail()}"
        trials = client.trials(job.id).data
        assert len(trials) == 4
        assert {t.state for t in trials} <= {"complete", "pruned"}
        complete = [t for t in trials if t.state == "complete"]
        assert complete
        for t in complete:
            assert 0.0 < t.values["accuracy"] <= 1.0
            assert sorted(t.intermediate_values) == [1, 2]  # the 3rd comes with the result
            artifact = client.download_artifact(job.id, t.number, server.data_dir / "m.onnx")
            assert artifact.stat().st_size > 0
        for t in trials:
            if t.state == "pruned":
                assert t.user_attrs["pruned_at_epoch"] < 3
        front = client.pareto(job.id)
        assert front.front_size >= 1


def test_a_pbt_job_restarts_trials_from_checkpoints_with_new_learning_rates(server) -> None:
    with Client(server.url) as client:
        # Asynchronous PBT exploits when a trial at a perturbation point ranks in the bottom
        # quantile of the scores reported so far, which depends on timing: at 4 epochs a
        # loaded machine once ran the job without any exploit; 6 epochs give more chances.
        spec = digits_job(
            "ray-pbt", "pbt", n_trials=6,
            algorithm={"backend": "ray", "sampler": "random", "pruner": "pbt",
                       "options": {"perturbation_interval": 1}},
        )
        spec["trainer"]["epochs"] = 6
        job = client.submit(spec)
        job = client.wait(job.id, timeout=600, poll_interval=1.0)
        assert job.status == "succeeded", f"{job.error}\n{server.log_tail()}"
        trials = client.trials(job.id).data
        assert len(trials) == 6 and all(t.state == "complete" for t in trials)
        # Exploits copy a better trial's parameters and perturb the learning rate: at least one
        # trial ends with parameters other than those it was asked with.
        changed = [t for t in trials if t.user_attrs["ray_params"]["lr"] != t.params["lr"]]
        assert changed
        for t in changed:
            assert 1e-3 <= t.user_attrs["ray_params"]["lr"] <= 3e-2


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
