"""Resolving a built-in NAS space with a user's additions and narrowings."""

from __future__ import annotations

import pytest

from edgetune.errors import InvalidSpecError
from edgetune.spaces import BUILTIN_SPACES, CategoricalParam, FixedParam, FloatParam, resolve_space


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
