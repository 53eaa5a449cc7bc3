"""JobSpec validation: every bad input names its field and the rule it breaks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgetune.spec import JobSpec


def error_of(data: dict) -> tuple[str, str]:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(data)
    first = info.value.errors()[0]
    return ".".join(str(p) for p in first["loc"]), first["msg"]


def test_defaults_fill_a_minimal_spec() -> None:
    spec = JobSpec(name="minimal")
    assert spec.trainer.name == "image-classifier" and spec.space.name == "cnn"
    assert spec.metric_names == ["accuracy"] and spec.directions == ["maximize"]
    assert spec.algorithm.sampler == "tpe" and spec.budget.n_trials == 20


def test_latency_objective_defaults_to_the_local_device_and_minimize() -> None:
    spec = JobSpec(name="x", objectives=[{"name": "accuracy"}, {"name": "latency_ms"}])
    assert spec.metric_names == ["accuracy", "latency_ms@local"]
    assert spec.directions == ["maximize", "minimize"]
    assert spec.devices == ["local"]


def test_a_trial_holds_one_cpu_and_no_gpu_by_default() -> None:
    assert JobSpec(name="x").resources.model_dump() == {"cpus": 1.0, "gpus": 0.0}
    spec = JobSpec(name="x", resources={"cpus": 0.5, "gpus": 0.25})
    assert (spec.resources.cpus, spec.resources.gpus) == (0.5, 0.25)
    assert JobSpec(name="x", resources={"gpus": 2}).resources.gpus == 2.0


def test_round_trips_through_json() -> None:
    spec = JobSpec(
        name="rt",
        space={"params": [{"type": "float", "name": "dropout", "low": 0, "high": 0.5}]},
        constraints=[{"metric": "size_bytes", "op": "<=", "bound": 1e6}],
        seed=3,
    )
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize(
    ("data", "field", "rule"),
    [
        ({}, "name", "Field required"),
        ({"name": "bad name!"}, "name", "should match pattern"),
        ({"name": "x", "unknown": 1}, "unknown", "Extra inputs are not permitted"),
        ({"name": "x", "trainer": {"epochs": 0}}, "trainer.epochs", "greater than or equal to 1"),
        ({"name": "x", "trainer": {"batch_size": -1}}, "trainer.batch_size", "greater than or equal to 1"),
        ({"name": "x", "budget": {"n_trials": 0}}, "budget.n_trials", "greater than or equal to 1"),
        ({"name": "x", "budget": {"n_trials": 10**9}}, "budget.n_trials", "less than or equal to 100000"),
        ({"name": "x", "budget": {"timeout_s": -5}}, "budget.timeout_s", "greater than 0"),
        ({"name": "x", "budget": {"parallelism": 0}}, "budget.parallelism", "greater than or equal to 1"),
        ({"name": "x", "budget": {"parallelism": 256}}, "budget.parallelism", "less than or equal to 64"),
        ({"name": "x", "objectives": []}, "objectives", "at least 1 item"),
        ({"name": "x", "objectives": [{"name": "speed"}]}, "objectives.0", "unknown metric"),
        ({"name": "x", "objectives": [{"name": "accuracy", "direction": "up"}]},
         "objectives.0.direction", "'minimize' or 'maximize'"),
        ({"name": "x", "objectives": [{"name": "accuracy", "device": "local"}]},
         "objectives.0", "applies to latency_ms only"),
        ({"name": "x", "objectives": [{"name": "accuracy"}, {"name": "accuracy"}]},
         "objectives", "repeated: accuracy"),
        ({"name": "x", "constraints": [{"metric": "size_bytes", "op": "<", "bound": 1}]},
         "constraints.0.op", "'<=' or '>='"),
        ({"name": "x", "constraints": [{"metric": "size_bytes", "op": "<=", "bound": "nan"}]},
         "constraints.0.bound", "finite number"),
        ({"name": "x", "space": {"name": "transformer"}}, "space.name", "unknown space"),
        ({"name": "x", "space": {"params": [{"type": "float", "name": "a", "low": 2,
                                             "high": 1}]}},
         "space.params.0.float", "must be <= `high`"),
        ({"name": "x", "space": {"params": [{"type": "float", "name": "a", "low": 0,
                                             "high": 1, "log": True}]}},
         "space.params.0.float", "must be > 0 when `log` is true"),
        ({"name": "x", "space": {"params": [{"type": "float", "name": "a", "low": 0,
                                             "high": 1, "step": 0.3}]}},
         "space.params.0.float", "does not divide the range"),
        ({"name": "x", "space": {"params": [{"type": "int", "name": "a", "low": 1,
                                             "high": 8, "log": True, "step": 2}]}},
         "space.params.0.int", "cannot be combined with `log`"),
        ({"name": "x", "space": {"params": [{"type": "categorical", "name": "a",
                                             "choices": []}]}},
         "space.params.0.categorical.choices", "at least 1 item"),
        ({"name": "x", "space": {"params": [{"type": "categorical", "name": "a",
                                             "choices": [1, 1]}]}},
         "space.params.0.categorical", "given twice"),
        # Optuna looks a choice up with `==`: it would record True and 1.0 as 1.
        ({"name": "x", "space": {"params": [{"type": "categorical", "name": "a",
                                             "choices": [1, True, 1.0]}]}},
         "space.params.0.categorical", "choices 1, True, 1.0 are one choice to Optuna"),
        ({"name": "x", "space": {"params": [{"type": "set", "name": "a"}]}},
         "space.params.0", "does not match any of the expected tags"),
        ({"name": "x", "space": {"params": [{"type": "int", "name": "a", "low": 1, "high": 2},
                                            {"type": "int", "name": "a", "low": 1, "high": 2}]}},
         "space.params", "must be unique"),
        ({"name": "x", "algorithm": {"backend": "slurm"}}, "algorithm.backend", "'optuna'"),
        ({"name": "x", "seed": -1}, "seed", "greater than or equal to 0"),
        ({"name": "x", "resources": {"cpus": 0}}, "resources.cpus", "greater than 0"),
        ({"name": "x", "resources": {"cpus": 2048}}, "resources.cpus",
         "less than or equal to 1024"),
        ({"name": "x", "resources": {"cpus": 0.00001}}, "resources.cpus", "steps of 0.0001"),
        ({"name": "x", "resources": {"gpus": -1}}, "resources.gpus",
         "greater than or equal to 0"),
        ({"name": "x", "resources": {"gpus": 65}}, "resources.gpus", "less than or equal to 64"),
        ({"name": "x", "resources": {"gpus": 1.5}}, "resources.gpus", "whole number of GPUs"),
        ({"name": "x", "resources": {"memory": 1}}, "resources.memory", "Extra inputs"),
    ],
)
def test_bad_spec_names_field_and_rule(data: dict, field: str, rule: str) -> None:
    got_field, message = error_of(data)
    assert got_field == field
    assert rule in message
