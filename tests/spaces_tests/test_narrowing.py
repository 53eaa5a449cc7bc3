"""Narrowing a built-in space: the built-in parameters that depend on a narrowed one follow it,
and a point of the narrowed space has the parameters the full space gives it."""

from __future__ import annotations

import re
from typing import Any

import optuna
import pytest

from edgetune.errors import InvalidSpecError
from edgetune.search.registry import SAMPLERS, AlgorithmContext
from edgetune.search.samplers import grid_size
from edgetune.search.space import suggest
from edgetune.spaces import (
    BUILTIN_SPACES,
    BuiltinSpace,
    CategoricalParam,
    Condition,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    ParamValue,
    resolve_space,
)
from edgetune.spec import JobSpec, TrainerSpec
from edgetune.trainers import get_trainer_class

optuna.logging.set_verbosity(optuna.logging.WARNING)


def conditions(params: list[Param], prefix: str) -> dict[str, list[ParamValue] | None]:
    """The condition values of the parameters named `prefix...`, None for unconditional."""
    return {p.name: (list(p.condition.values) if p.condition else None)
            for p in params if p.name.startswith(prefix)}


@pytest.mark.parametrize(
    ("n_layers", "widths"),
    [
        # The case: was refused with "'n_layers' never takes 3, 4".
        (IntParam(name="n_layers", low=1, high=2), {"width_1": None, "width_2": [2]}),
        (IntParam(name="n_layers", low=1, high=1), {"width_1": None}),
        (IntParam(name="n_layers", low=2, high=3),
         {"width_1": None, "width_2": [2, 3], "width_3": [3]}),
        (IntParam(name="n_layers", low=3, high=4),
         {"width_1": None, "width_2": [3, 4], "width_3": [3, 4], "width_4": [4]}),
        (IntParam(name="n_layers", low=1, high=4, step=3),
         {"width_1": None, "width_2": [4], "width_3": [4], "width_4": [4]}),
        (FixedParam(name="n_layers", value=2), {"width_1": None, "width_2": [2]}),
        (CategoricalParam(name="n_layers", choices=[1, 3]),
         {"width_1": None, "width_2": [3], "width_3": [3]}),
        # Not narrowed: the built-in conditions as they are.
        (IntParam(name="n_layers", low=1, high=4),
         {"width_1": None, "width_2": [2, 3, 4], "width_3": [3, 4], "width_4": [4]}),
    ],
)
def test_narrowing_mlp_layers_keeps_the_widths_those_layers_have(
    n_layers: Param, widths: dict[str, list[ParamValue] | None]
) -> None:
    space = resolve_space("mlp", [n_layers])
    assert conditions(space, "width_") == widths
    assert next(p for p in space if p.name == "n_layers") == n_layers
    # Only widths are left out, and each kept one still comes after n_layers.
    full = [p.name for p in resolve_space("mlp", [])]
    assert [p.name for p in space] == [n for n in full if not n.startswith("width_")
                                       or n in widths]


def test_built_in_parameters_that_depend_on_one_left_out_are_left_out_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No built-in space chains conditions yet; one that does: optimizer <- momentum <-
    # nesterov, and a `gamma` beside nesterov.
    chained = BuiltinSpace(name="chained", description="a chain", params=(
        CategoricalParam(name="optimizer", choices=["sgd", "adam"]),
        FloatParam(name="momentum", low=0.0, high=0.9, step=0.3,
                   condition=Condition(param="optimizer", values=["sgd"])),
        CategoricalParam(name="nesterov", choices=[False, True],
                         condition=Condition(param="momentum", values=[0.3, 0.6, 0.9])),
        FixedParam(name="gamma", value=0.5, condition=Condition(param="nesterov", values=[True])),
        IntParam(name="layers", low=1, high=4),
    ))
    monkeypatch.setitem(BUILTIN_SPACES, "chained", chained)

    adam = resolve_space("chained", [FixedParam(name="optimizer", value="adam")])
    assert [p.name for p in adam] == ["optimizer", "layers"]
    no_momentum = resolve_space("chained", [FixedParam(name="momentum", value=0.0)])
    assert [p.name for p in no_momentum] == ["optimizer", "momentum", "layers"]
    some = resolve_space("chained", [FloatParam(name="momentum", low=0.0, high=0.3, step=0.3)])
    assert conditions(some, "nesterov") == {"nesterov": [0.3]}
    assert conditions(some, "gamma") == {"gamma": [True]}
    # A user's parameter on one left out is refused with the first cause.
    with pytest.raises(InvalidSpecError, match=re.escape(
        "'x' depends on 'gamma', which the narrowed space never samples ('optimizer' never "
        "takes 'sgd')"
    )):
        resolve_space("chained", [
            FixedParam(name="optimizer", value="adam"),
            FixedParam(name="x", value=1, condition=Condition(param="gamma", values=[0.5])),
        ])


def narrowings(p: Param) -> list[Param]:
    """Ways to narrow `p`: fixed at each end (or each choice), and an int to its lower half."""
    if isinstance(p, FixedParam):
        return [p]
    if isinstance(p, CategoricalParam):
        return [FixedParam(name=p.name, value=c) for c in p.choices] + [
            CategoricalParam(name=p.name, choices=p.choices[:1])
        ]
    assert isinstance(p, IntParam | FloatParam)
    ends = [FixedParam(name=p.name, value=p.low), FixedParam(name=p.name, value=p.high)]
    if isinstance(p, IntParam) and p.high - p.low >= 2 * p.step:
        mid = p.low + (p.high - p.low) // (2 * p.step) * p.step
        ends.append(IntParam(name=p.name, low=p.low, high=mid, step=p.step))
    return ends


CASES = [
    pytest.param(space, narrowed, id=f"{space}-{narrowed.name}-{i}")
    for space in sorted(BUILTIN_SPACES)
    for p in BUILTIN_SPACES[space].params
    for i, narrowed in enumerate(narrowings(p))
]


@pytest.mark.parametrize(("space_name", "narrowed"), CASES)
def test_every_narrowing_of_a_built_in_space_samples_what_the_full_space_would(
    space_name: str, narrowed: Param
) -> None:
    space = resolve_space(space_name, [narrowed])
    # The full space, with the user's parameter in place of the built-in one (a user's
    # parameter replaces the built-in's condition too).
    full = [narrowed if p.name == narrowed.name else p for p in resolve_space(space_name, [])]
    assert {p.name for p in space} <= {p.name for p in full}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    active_in_some = set()
    for _ in range(12):
        values = suggest(study.ask(), space)
        # The full space's conditions, with the narrowed parameter's value: the same point.
        expected = {p.name for p in full if p.condition is None
                    or p.condition.holds(values)}
        assert set(values) == expected
        assert narrowed.can_take(values[narrowed.name])
        active_in_some |= set(values)
    # Nothing left in the space is dead: every kept parameter is sampled somewhere (the
    # built-in conditions all name the narrowed parameter or none, so 12 trials show them).
    if narrowed.name == "n_layers" or all(p.condition is None for p in full):
        assert active_in_some == {p.name for p in space}


@pytest.mark.parametrize(
    ("own", "rule"),
    [
        # The user's own width_3, with a condition of their own, is not rewritten.
        (IntParam(name="width_3", low=16, high=32,
                  condition=Condition(param="n_layers", values=[3])),
         "'n_layers' never takes 3, so 'width_3' would never be sampled; 'n_layers' takes "
         "integers in [1, 2]"),
        (FixedParam(name="x", value=1, condition=Condition(param="n_layers", values=[3, 4])),
         "'n_layers' never takes 3, 4, so 'x' would never be sampled"),
        (FixedParam(name="x", value=1, condition=Condition(param="width_4", values=[16])),
         "'x' depends on 'width_4', which the narrowed space never samples ('n_layers' never "
         "takes 4), so 'x' would never be sampled"),
    ],
)
def test_a_users_own_parameter_that_can_never_be_sampled_is_still_refused(
    own: Param, rule: str
) -> None:
    with pytest.raises(InvalidSpecError) as info:
        resolve_space("mlp", [IntParam(name="n_layers", low=1, high=2), own])
    assert info.value.message.startswith(rule)
    assert info.value.field == f"space.params.{own.name}.condition"


def job(sampler: str) -> JobSpec:
    return JobSpec.model_validate({
        "name": "narrowed", "seed": 3,
        "trainer": {"name": "tabular-classifier", "dataset": "iris"},
        "space": {"name": "mlp", "params": [
            {"type": "int", "name": "n_layers", "low": 1, "high": 2},
            # Fixed or stepped so that the grid can enumerate the space too.
            {"type": "categorical", "name": "width_1", "choices": [16, 32]},
            {"type": "fixed", "name": "lr", "value": 0.01},
            {"type": "fixed", "name": "dropout", "value": 0.0},
        ]},
        "algorithm": {"sampler": sampler},
    })


SAMPLER_NAMES = [n for n, e in SAMPLERS.items() if e.single_objective]


@pytest.fixture(scope="module")
def iris() -> tuple[Any, Any]:
    trainer = get_trainer_class("tabular-classifier")(
        TrainerSpec(name="tabular-classifier", dataset="iris")
    )
    return trainer, trainer.load_data(val_fraction=0.2, seed=0)


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_and_the_trainer_take_a_narrowed_mlp(
    sampler: str, iris: tuple[Any, Any]
) -> None:
    from torch import nn

    spec = job(sampler)
    space = resolve_space(spec.space.name, spec.space.params)
    study = optuna.create_study(sampler=SAMPLERS[sampler].build(AlgorithmContext(spec, space)))
    trainer, data = iris
    for _ in range(10):
        trial = study.ask()
        values = suggest(trial, space)
        layers = int(values["n_layers"])
        assert layers in (1, 2)
        assert {k for k in values if k.startswith("width_")} == {
            f"width_{i}" for i in range(1, layers + 1)
        }
        model = trainer.build_model(values, data)
        linear = [m for m in model if isinstance(m, nn.Linear)]
        assert [m.out_features for m in linear[:-1]] == [
            values[f"width_{i}"] for i in range(1, layers + 1)
        ]
        study.tell(trial, float(layers))
    if sampler == "grid":
        # activation (3) x (width_1 (2) when one layer; width_1 x width_2 (16..256, every
        # int) when two): no point for a width_3 or width_4 that no trial has.
        assert grid_size(space) == 3 * (2 + 2 * 241)
