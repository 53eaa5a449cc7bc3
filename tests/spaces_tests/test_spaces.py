"""Resolving a built-in NAS space with a user's additions and narrowings, and checking it."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from edgetune.errors import InvalidSpecError
from edgetune.spaces import (
    BUILTIN_SPACES,
    MAX_PARAMS,
    CategoricalParam,
    Condition,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    ParamValue,
    resolve_space,
)


def when(param: str, *values: ParamValue) -> Condition:
    return Condition(param=param, values=list(values))


def names(params: Sequence[Param]) -> list[str]:
    return [p.name for p in params]


def refusal(name: str | None, params: Sequence[Param]) -> InvalidSpecError:
    with pytest.raises(InvalidSpecError) as info:
        resolve_space(name, params)
    return info.value


def test_builtin_cnn_space_has_the_architecture_knobs() -> None:
    names = [p.name for p in BUILTIN_SPACES["cnn"].params]
    assert {"depth", "width", "kernel_size", "lr"} <= set(names)


def test_user_params_narrow_and_extend_a_builtin_space() -> None:
    params = resolve_space(
        "cnn",
        [
            FixedParam(name="depth", value=2),
            CategoricalParam(name="kernel_size", choices=[3]),
            FloatParam(name="dropout", low=0.0, high=0.5),
        ],
    )
    by_name = {p.name: p for p in params}
    assert isinstance(by_name["depth"], FixedParam) and by_name["depth"].value == 2
    assert isinstance(by_name["kernel_size"], CategoricalParam)
    assert by_name["kernel_size"].choices == [3]
    assert [p.name for p in params][-1] == "dropout"
    assert len(params) == len(BUILTIN_SPACES["cnn"].params) + 1


def test_no_builtin_space_means_only_the_users_params() -> None:
    assert [p.name for p in resolve_space(None, [FloatParam(name="lr", low=0.1, high=1)])] == [
        "lr"
    ]


def test_unknown_space_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InvalidSpecError, match="known spaces: cnn") as info:
        resolve_space("vit", [])
    assert info.value.field == "space.name"


@pytest.mark.parametrize("name", sorted(BUILTIN_SPACES))
def test_every_builtin_space_resolves_on_its_own(name: str) -> None:
    assert names(resolve_space(name, [])) == names(BUILTIN_SPACES[name].params)


def test_a_conditional_parameter_comes_after_the_one_it_depends_on() -> None:
    params = resolve_space(
        None,
        [
            FixedParam(name="c", value=1, condition=when("b", True)),
            IntParam(name="x", low=0, high=3),
            CategoricalParam(name="b", choices=[True, False], condition=when("a", "on")),
            FloatParam(name="y", low=0, high=1),
            CategoricalParam(name="a", choices=["on", "off"]),
        ],
    )
    # The earliest parameter whose condition's parameter is already placed goes next.
    assert names(params) == ["x", "y", "a", "b", "c"]


def test_the_order_is_kept_when_no_condition_needs_a_change() -> None:
    given: list[Param] = [
        CategoricalParam(name="a", choices=["on", "off"]),
        FloatParam(name="b", low=0, high=1, condition=when("a", "on")),
        IntParam(name="c", low=0, high=3),
        IntParam(name="d", low=0, high=3, condition=when("c", 0)),
    ]
    assert resolve_space(None, given) == given


def test_a_builtin_parameter_can_be_made_conditional_on_a_users_parameter() -> None:
    params = resolve_space(
        "cnn",
        [
            FloatParam(name="lr", low=1e-3, high=1e-1, log=True, condition=when("optimizer", "sgd")),
            CategoricalParam(name="optimizer", choices=["sgd", "adam"]),
        ],
    )
    builtin = [n for n in names(BUILTIN_SPACES["cnn"].params) if n != "lr"]
    assert names(params) == [*builtin, "optimizer", "lr"]
    assert params[-1].condition == when("optimizer", "sgd")


def test_a_condition_may_name_each_kind_of_parameter_by_a_value_it_takes() -> None:
    resolve_space(
        None,
        [
            CategoricalParam(name="cat", choices=["a", 1, False, 0.5]),
            IntParam(name="int", low=2, high=10, step=2),
            IntParam(name="log_int", low=1, high=1024, log=True),
            FloatParam(name="grid", low=-0.5, high=0.5, step=0.1),
            FixedParam(name="fixed", value="x"),
            FixedParam(name="on_cat", value=0, condition=when("cat", "a", 1, False, 0.5)),
            FixedParam(name="on_int", value=0, condition=when("int", 2, 6.0, 10)),
            FixedParam(name="on_log_int", value=0, condition=when("log_int", 1, 777, 1024)),
            FixedParam(name="on_grid", value=0, condition=when("grid", -0.5, 0.0, 0.3, 0.5)),
            FixedParam(name="on_fixed", value=0, condition=when("fixed", "x")),
        ],
    )


@pytest.mark.parametrize(
    ("target", "values", "takes"),
    [
        (CategoricalParam(name="t", choices=["a", 1]), ["b"], "one of 'a', 1"),
        # A bool is not the number 1, nor the string "1".
        (CategoricalParam(name="t", choices=["a", 1]), [True], "one of 'a', 1"),
        (CategoricalParam(name="t", choices=[True]), [1], "one of True"),
        (CategoricalParam(name="t", choices=[1]), ["1"], "one of 1"),
        (FixedParam(name="t", value=2), [3], "only 2"),
        (FixedParam(name="t", value="a"), ["b"], "only 'a'"),
        (IntParam(name="t", low=1, high=3), [4], "integers in [1, 3]"),
        (IntParam(name="t", low=1, high=3), [0], "integers in [1, 3]"),
        (IntParam(name="t", low=1, high=3), [1.5], "integers in [1, 3]"),
        (IntParam(name="t", low=1, high=3), ["2"], "integers in [1, 3]"),
        (IntParam(name="t", low=1, high=3), [True], "integers in [1, 3]"),
        (IntParam(name="t", low=0, high=8, step=4), [2], "integers in [0, 8] every 4"),
        (FloatParam(name="t", low=0, high=1, step=0.25), [1.25], "numbers in [0.0, 1.0] every 0.25"),
        (FloatParam(name="t", low=0, high=1, step=0.25), [0.3], "numbers in [0.0, 1.0] every 0.25"),
    ],
)
def test_a_condition_on_a_value_its_parameter_never_takes_is_refused(
    target: Param, values: list[ParamValue], takes: str
) -> None:
    error = refusal(None, [target, FixedParam(name="a", value=0, condition=when("t", *values))])
    assert error.field == "space.params.a.condition"
    assert f"'t' never takes {values[0]!r}, so 'a' would never be sampled" in error.message
    assert error.message.endswith(f"'t' takes {takes}")


def test_only_the_values_never_taken_are_named() -> None:
    error = refusal("cnn", [FixedParam(name="a", value=0, condition=when("depth", 1, 7, 3, 9))])
    assert "'depth' never takes 7, 9," in error.message


def test_a_condition_on_a_float_without_step_is_refused() -> None:
    error = refusal("cnn", [FixedParam(name="a", value=0, condition=when("lr", 0.01))])
    assert error.field == "space.params.a.condition"
    assert "'lr', a float without `step`" in error.message
    assert "give 'lr' a `step` or make it categorical" in error.message


def test_a_condition_on_an_unknown_parameter_names_it_and_the_known_ones() -> None:
    error = refusal(
        None,
        [
            IntParam(name="depth", low=1, high=3),
            FixedParam(name="a", value=0, condition=when("optimizer", "sgd")),
            CategoricalParam(name="kernel_size", choices=[3, 5]),
        ],
    )
    assert error.field == "space.params.a.condition"
    assert error.message == (
        "'a' depends on 'optimizer', which is not a parameter of the space; "
        "its parameters: a, depth, kernel_size"
    )


def test_a_long_list_of_known_parameters_is_cut_short() -> None:
    params: list[Param] = [FixedParam(name=f"p{i:03d}", value=i) for i in range(30)]
    params.append(FixedParam(name="z", value=0, condition=when("b", 1)))
    error = refusal(None, params)
    listed = ", ".join(f"p{i:03d}" for i in range(20))
    assert error.message.endswith(f"its parameters: {listed} and 11 more")


@pytest.mark.parametrize(
    ("params", "cycle"),
    [
        ([FixedParam(name="a", value=1, condition=when("a", 1))], "a -> a"),
        (
            [
                FixedParam(name="a", value=1, condition=when("b", 1)),
                FixedParam(name="b", value=1, condition=when("a", 1)),
            ],
            "a -> b -> a",
        ),
        (
            # A parameter that depends on a cycle is not part of it.
            [
                FixedParam(name="x", value=1),
                FixedParam(name="tail", value=1, condition=when("c", 1)),
                FixedParam(name="c", value=1, condition=when("a", 1)),
                FixedParam(name="b", value=1, condition=when("c", 1)),
                FixedParam(name="a", value=1, condition=when("b", 1)),
            ],
            "c -> a -> b -> c",
        ),
    ],
)
def test_conditions_that_form_a_cycle_are_refused_with_the_cycle(
    params: list[Param], cycle: str
) -> None:
    error = refusal(None, params)
    assert error.field == f"space.params.{cycle.split()[0]}.condition"
    assert f"the conditions form a cycle, {cycle} (each depends on the next)" in error.message


def test_repeated_parameter_names_are_refused() -> None:
    for name in (None, "cnn"):
        for repeated in ("dropout", "depth"):
            error = refusal(
                name,
                [
                    FloatParam(name=repeated, low=0, high=1),
                    FixedParam(name="other", value=1),
                    FixedParam(name=repeated, value=0.5),
                ],
            )
            assert error.field == "space.params"
            assert error.message == f"parameter names must be unique; repeated: {repeated}"


def test_at_most_max_params_parameters_counting_the_builtin_ones() -> None:
    n_builtin = len(BUILTIN_SPACES["cnn"].params)
    fill = [FixedParam(name=f"p{i}", value=i) for i in range(MAX_PARAMS)]
    assert len(resolve_space(None, fill)) == MAX_PARAMS
    assert len(resolve_space("cnn", fill[: MAX_PARAMS - n_builtin])) == MAX_PARAMS
    error = refusal("cnn", fill[: MAX_PARAMS - n_builtin + 1])
    assert error.field == "space.params"
    assert error.message == (
        f"the space has {MAX_PARAMS + 1} parameters, but may have at most {MAX_PARAMS}"
    )
    assert refusal(None, [*fill, FixedParam(name="one_more", value=0)]).field == "space.params"


def test_a_long_chain_of_conditions_resolves_in_reverse() -> None:
    chain: list[Param] = [
        CategoricalParam(name=f"p{i}", choices=[0, 1], condition=when(f"p{i + 1}", 1))
        for i in range(MAX_PARAMS - 1)
    ]
    chain.append(CategoricalParam(name=f"p{MAX_PARAMS - 1}", choices=[0, 1]))
    assert names(resolve_space(None, chain)) == [f"p{i}" for i in reversed(range(MAX_PARAMS))]
