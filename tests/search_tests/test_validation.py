"""Submission-time checks that need the registries: samplers, pruners, trainers, devices."""

from __future__ import annotations

import pytest

from edgetune.errors import InvalidSpecError
from edgetune.search import PRUNERS, SAMPLERS, validate_job_spec
from edgetune.spec import JobSpec

TWO = [{"name": "accuracy"}, {"name": "size_bytes"}]


def refuse(data: dict) -> InvalidSpecError:
    with pytest.raises(InvalidSpecError) as info:
        validate_job_spec(JobSpec.model_validate({"name": "x", **data}))
    return info.value


def test_registry_has_every_algorithm_of_the_design() -> None:
    assert set(SAMPLERS) == {"grid", "random", "tpe", "gp", "cmaes", "nsga2", "nsga3", "motpe",
                             "rl"}
    assert set(PRUNERS) == {"none", "median", "sha", "hyperband", "asha", "pbt", "mo-asha"}
    assert PRUNERS["hyperband"].backends == ("optuna", "ray")
    assert PRUNERS["pbt"].backends == ("ray",)
    assert PRUNERS["mo-asha"].backends == ("optuna",)


def test_a_ray_job_is_refused_where_ray_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    error = refuse({"algorithm": {"backend": "ray", "pruner": "asha"}})
    assert error.field == "algorithm.backend"
    assert "pip install 'edgetune[ray]'" in error.message


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2"])
def test_valid_multi_objective_specs_pass(sampler: str) -> None:
    validate_job_spec(JobSpec.model_validate(
        {"name": "x", "objectives": TWO, "algorithm": {"sampler": sampler}}
    ))


def test_single_objective_with_median_pruner_passes() -> None:
    validate_job_spec(JobSpec.model_validate({"name": "x", "algorithm": {"pruner": "median"}}))


@pytest.mark.parametrize(
    "algorithm",
    [{"backend": "ray", "pruner": "asha"}, {"backend": "ray", "pruner": "pbt"},
     {"backend": "ray", "pruner": "hyperband", "sampler": "gp"}, {"pruner": "hyperband"},
     {"pruner": "sha", "options": {"reduction_factor": 2}},
     {"sampler": "rl", "options": {"reward": "mnasnet-hard", "latency_target_ms": 1.5}}],
)
def test_runnable_algorithms_pass(algorithm: dict) -> None:
    validate_job_spec(JobSpec.model_validate({"name": "x", "algorithm": algorithm}))


def test_multi_objective_early_stopping_passes_with_stand_ins_for_latency_and_size() -> None:
    validate_job_spec(JobSpec.model_validate({
        "name": "x", "objectives": [{"name": "accuracy"}, {"name": "latency_ms"},
                                    {"name": "size_bytes"}],
        "algorithm": {"sampler": "nsga3", "pruner": "mo-asha"},
    }))


@pytest.mark.parametrize(
    ("data", "field", "text"),
    [
        ({"algorithm": {"sampler": "annealing"}}, "algorithm.sampler", "known samplers"),
        ({"algorithm": {"pruner": "hyperband9"}}, "algorithm.pruner", "known pruners"),
        ({"objectives": TWO, "algorithm": {"pruner": "median"}}, "algorithm.pruner",
         "for several: mo-asha"),
        ({"objectives": [{"name": "sparsity"}], "algorithm": {"pruner": "median"}},
         "objectives.0.name", "reports only accuracy, params, flops"),
        ({"algorithm": {"pruner": "mo-asha"}}, "algorithm.pruner",
         "for one on 'optuna': median, sha, hyperband"),
        ({"algorithm": {"pruner": "pbt"}}, "algorithm.pruner",
         "runs on the ray backend, not on 'optuna' (set algorithm.backend)"),
        ({"algorithm": {"pruner": "asha"}}, "algorithm.pruner", "on 'optuna': none, median, sha"),
        ({"objectives": TWO, "algorithm": {"backend": "ray", "pruner": "asha"}},
         "algorithm.pruner", "mo-asha stops multi-objective trials on the optuna backend"),
        ({"algorithm": {"backend": "ray", "pruner": "mo-asha"}}, "algorithm.pruner",
         "runs on the optuna backend"),
        ({"algorithm": {"backend": "ray", "pruner": "pbt"},
          "space": {"name": "cnn", "params": [{"type": "fixed", "name": "lr", "value": 0.01}]}},
         "algorithm.pruner", "has none that image-classifier can change"),
        ({"algorithm": {"sampler": "cmaes"}, "objectives": TWO}, "algorithm.sampler",
         "samplers for several: grid, random, tpe, motpe, gp, nsga2, nsga3, rl"),
        ({"algorithm": {"sampler": "nsga3"}}, "algorithm.sampler",
         "made for several objectives"),
        ({"algorithm": {"sampler": "grid"},
          "space": {"name": "cnn", "params": [{"type": "float", "name": "lr", "low": 0.001,
                                               "high": 0.1}]}},
         "space.params", "lr is a float without `step`"),
        ({"algorithm": {"options": {"population_size": 4}}}, "algorithm.options.population_size",
         "neither 'tpe' nor 'none' reads it; they read: multivariate, n_startup_trials"),
        ({"algorithm": {"sampler": "rl", "options": {"reward": "fast"}}},
         "algorithm.options.reward", "must be 'mnasnet'"),
        ({"algorithm": {"sampler": "rl", "options": {"latency_weight": 0.5}}},
         "algorithm.options.latency_weight", "a number < 0"),
        ({"objectives": [{"name": "f1"}]}, "objectives.0.name",
         "image-classifier does not measure 'f1'"),
        ({"trainer": {"name": "function", "dataset": "zdt1"}, "objectives": [{"name": "f1"}],
          "space": {"name": None, "params": [{"type": "float", "name": "y", "low": 0,
                                              "high": 1}]}},
         "space.params", "reads x0, x1"),
        ({"trainer": {"name": "function", "dataset": "zdt1"},
          "objectives": [{"name": "f1"}, {"name": "f3"}],
          "space": {"name": None, "params": [{"type": "float", "name": "x0", "low": 0,
                                              "high": 1},
                                             {"type": "float", "name": "x1", "low": 0,
                                              "high": 1}]}},
         "objectives.1.name", "zdt1 has 2 objectives"),
        ({"constraints": [{"metric": "size_bytes", "op": "<=", "bound": 1}],
          "algorithm": {"sampler": "random"}}, "algorithm.sampler", "cannot steer by"),
        ({"trainer": {"name": "gpt"}}, "trainer.name", "known trainers: image-classifier"),
        ({"trainer": {"dataset": "imagenet"}}, "trainer.dataset", "known: digits, mnist"),
        ({"trainer": {"options": {"colour": "red"}}}, "trainer.options.colour", "unknown option"),
        ({"trainer": {"options": {"val_fraction": 0.9}}}, "trainer.options.val_fraction",
         "(0, 0.5]"),
        ({"trainer": {"options": {"threads": 0}}}, "trainer.options.threads", ">= 1"),
        ({"space": {"params": [{"type": "float", "name": "momentum", "low": 0, "high": 1}]}},
         "space.params.0.name", "has no parameter 'momentum'"),
        ({"space": {"name": None}}, "space", "no parameters"),
        ({"trainer": {"name": "tabular-classifier", "dataset": "iris"}}, "space.name",
         "does not read (depth, kernel_size)"),
        ({"objectives": [{"name": "latency_ms", "device": "pixel7"}]}, "objectives.0.device",
         "registered devices: local"),
        ({"resources": {"gpus": 1}}, "resources.gpus",
         "the optuna backend does not schedule GPUs"),
        ({"resources": {"gpus": 0.5}, "algorithm": {"pruner": "median"}}, "resources.gpus",
         "the ray backend schedules GPUs per trial"),
        ({"algorithm": {"backend": "ray"}, "trainer": {"options": {"device": "cuda"}}},
         "resources.gpus", "sees only the GPUs it holds"),
    ],
)
def test_unrunnable_specs_are_refused_naming_the_field(data: dict, field: str, text: str) -> None:
    error = refuse(data)
    assert error.field == field
    assert text in error.message


@pytest.mark.parametrize(
    "data",
    [{"resources": {"cpus": 2}},  # the optuna backend runs a process per trial, whatever cpus
     {"resources": {"cpus": 0.5, "gpus": 0.5}, "algorithm": {"backend": "ray"}},
     {"resources": {"gpus": 2}, "algorithm": {"backend": "ray", "pruner": "asha"},
      "trainer": {"options": {"device": "cuda"}}}],
)
def test_trial_resources_that_a_backend_can_schedule_pass(data: dict) -> None:
    validate_job_spec(JobSpec.model_validate({"name": "x", **data}))
