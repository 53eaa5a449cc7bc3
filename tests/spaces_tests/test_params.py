"""Each parameter type checks itself as it is built; a condition says when a parameter exists."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from edgetune.spaces import (
    CategoricalParam,
    Condition,
    FixedParam,
    Param,
)

PARAM: TypeAdapter[Param] = TypeAdapter(Param)
LONG = "x" * 257


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        ({"type": "float", "name": "a", "low": 2, "high": 1}, "must be <= `high`"),
        ({"type": "int", "name": "a", "low": 2, "high": 1}, "must be <= `high`"),
        ({"type": "float", "name": "a", "low": 0, "high": 1, "log": True}, "must be > 0"),
        ({"type": "int", "name": "a", "low": -1, "high": 8, "log": True}, "must be > 0"),
        ({"type": "float", "name": "a", "low": 1e-3, "high": 1, "log": True, "step": 0.1},
         "cannot be combined with `log`"),
        ({"type": "int", "name": "a", "low": 1, "high": 8, "log": True, "step": 2},
         "cannot be combined with `log`"),
        ({"type": "float", "name": "a", "low": 0, "high": 1, "step": 0.3},
         "does not divide the range"),
        ({"type": "int", "name": "a", "low": 0, "high": 10, "step": 3},
         "does not divide the range"),
        ({"type": "float", "name": "a", "low": 0, "high": 1, "step": 1e-16},
         "more than 1e+15 values"),
        ({"type": "float", "name": "a", "low": 0, "high": 1, "step": 0},
         "greater than 0"),
        ({"type": "int", "name": "a", "low": 0, "high": 10, "step": 0},
         "greater than or equal to 1"),
        ({"type": "float", "name": "a", "low": 0, "high": 2.0**54}, "must lie within"),
        ({"type": "float", "name": "a", "low": 0, "high": float("inf")}, "finite number"),
        ({"type": "categorical", "name": "a", "choices": []}, "at least 1 item"),
        ({"type": "categorical", "name": "a", "choices": list(range(10_001))},
         "at most 10000 items"),
        ({"type": "categorical", "name": "a", "choices": ["a", "a"]}, "given twice"),
        ({"type": "categorical", "name": "a", "choices": [LONG]}, "at most 256 characters"),
        ({"type": "categorical", "name": "a", "choices": [float("nan")]}, "finite number"),
        ({"type": "fixed", "name": "a", "value": LONG}, "at most 256 characters"),
        ({"type": "fixed", "name": "a"}, "Field required"),
        ({"type": "float", "name": "1a", "low": 0, "high": 1}, "should match pattern"),
        ({"type": "float", "name": "a" * 65, "low": 0, "high": 1}, "should match pattern"),
        ({"type": "float", "name": "a", "low": 0, "high": 1, "scale": 2}, "Extra inputs"),
        ({"type": "set", "name": "a"}, "does not match any of the expected tags"),
    ],
)
def test_a_bad_parameter_is_refused_with_its_rule(data: dict[str, Any], rule: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(rule)):
        PARAM.validate_python(data)


def test_a_categorical_takes_10000_choices_and_256_character_strings() -> None:
    assert len(CategoricalParam(name="a", choices=list(range(10_000))).choices) == 10_000
    assert CategoricalParam(name="a", choices=["x" * 256]).choices == ["x" * 256]
    # A string is never equal to a number, nor 1.5 to 1: Optuna tells these apart.
    assert CategoricalParam(name="a", choices=[1, 1.5, "1"]).choices == [1, 1.5, "1"]
    assert CategoricalParam(name="a", choices=[True, 2, 1.5, "1", "True"]).choices == [
        True, 2, 1.5, "1", "True"
    ]


@pytest.mark.parametrize(
    ("choices", "named"),
    [
        ([1, True, 1.0], "choices 1, True, 1.0 are one choice to Optuna"),
        (["a", 0, 2, False], "choices 0, False are one choice to Optuna"),
        ([0.0, -0.0], "choices 0.0, -0.0 are one choice to Optuna"),
        ([3, "x", 3.0], "choices 3, 3.0 are one choice to Optuna"),
        ([True, 1.0, 0, False], "choices True, 1.0 are one choice to Optuna, which tells "
                                "choices apart with `==` and would record each as True; "
                                "keep one of them; choices 0, False are one choice"),
        (["a", 1, "a"], "choice 'a' is given twice"),
        ([2, 2, 2], "choice 2 is given 3 times"),
    ],
)
def test_choices_optuna_cannot_tell_apart_are_refused_by_name(
    choices: list[Any], named: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(named)):
        CategoricalParam(name="a", choices=choices)


def test_every_choice_the_check_accepts_has_an_index_of_its_own_in_optuna() -> None:
    # The rule the check stands for: Optuna's CategoricalDistribution maps each accepted
    # choice back to its own index (it looks choices up with `choices.index`).
    from optuna.distributions import CategoricalDistribution

    choices = CategoricalParam(name="a", choices=[True, 2, 1.5, "1", "True", 0, -3.25]).choices
    distribution = CategoricalDistribution(choices)
    assert [distribution.to_internal_repr(c) for c in choices] == list(range(len(choices)))
    for refused in ([1, True], [1, 1.0], [0, False]):
        with pytest.raises(ValidationError):
            CategoricalParam(name="a", choices=refused)
        assert CategoricalDistribution(refused).to_internal_repr(refused[1]) == 0


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        ({"param": "b", "values": []}, "at least 1 item"),
        ({"param": "b", "values": list(range(10_001))}, "at most 10000 items"),
        ({"param": "b", "values": [LONG]}, "at most 256 characters"),
        ({"param": "b", "values": [float("nan")]}, "finite number"),
        ({"param": "b c", "values": [1]}, "should match pattern"),
        ({"param": "b", "values": [1], "op": "=="}, "Extra inputs"),
        ({"values": [1]}, "Field required"),
    ],
)
def test_a_bad_condition_is_refused_with_its_rule(data: dict[str, Any], rule: str) -> None:
    with pytest.raises(ValidationError, match=rule):
        FixedParam.model_validate({"name": "a", "value": 1, "condition": data})


def test_every_parameter_type_takes_a_condition_from_json() -> None:
    condition = {"param": "optimizer", "values": ["sgd", True, 3, 0.5]}
    for data in (
        {"type": "float", "name": "a", "low": 0, "high": 1},
        {"type": "int", "name": "a", "low": 0, "high": 1},
        {"type": "categorical", "name": "a", "choices": [1, 2]},
        {"type": "fixed", "name": "a", "value": 1},
    ):
        param = PARAM.validate_json(json.dumps({**data, "condition": condition}))
        assert param.condition == Condition(param="optimizer", values=["sgd", True, 3, 0.5])
        # JSON keeps each value's kind: true stays a bool, 3 an int.
        assert [type(v) for v in param.condition.values] == [str, bool, int, float]
        assert PARAM.dump_python(param, mode="json")["condition"] == condition
        assert PARAM.validate_python(data).condition is None
