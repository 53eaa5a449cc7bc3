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


def test_registry_has_the_foundation_algorithms() -> None:
    assert {"random", "tpe", "nsga2"} <= set(SAMPLERS)
    assert {"none", "median"} <= set(PRUNERS)


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2"])
def test_valid_multi_objective_specs_pass(sampler: str) -> None:
    validate_job_spec(JobSpec.model_validate(
        {"name": "x", "objectives": TWO, "algorithm": {"sampler": sampler}}
    ))


def test_single_objective_with_median_pruner_passes() -> None:
    validate_job_spec(JobSpec.model_validate({"name": "x", "algorithm": {"pruner": "median"}}))


@pytest.mark.parametrize(
    ("data", "field", "text"),
    [
        ({"algorithm": {"sampler": "annealing"}}, "algorithm.sampler", "known samplers"),
        ({"algorithm": {"pruner": "hyperband9"}}, "algorithm.pruner", "known pruners"),
        ({"objectives": TWO, "algorithm": {"pruner": "median"}}, "algorithm.pruner",
         "pruners for several: none"),
        ({"objectives": [{"name": "size_bytes"}], "algorithm": {"pruner": "median"}},
         "algorithm.pruner", "must be accuracy"),
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
    ],
)
def test_unrunnable_specs_are_refused_naming_the_field(data: dict, field: str, text: str) -> None:
    error = refuse(data)
    assert error.field == field
    assert text in error.message
