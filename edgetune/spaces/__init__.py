"""Search spaces: parameter types, validation and the built-in NAS spaces. Pure Python."""

from __future__ import annotations

from collections.abc import Sequence

from edgetune.errors import InvalidSpecError
from edgetune.spaces._builtin import BUILTIN_SPACES, BuiltinSpace
from edgetune.spaces._params import (
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    ParamValue,
)

MAX_PARAMS = 1_000

__all__ = [
    "BUILTIN_SPACES",
    "MAX_PARAMS",
    "BuiltinSpace",
    "CategoricalParam",
    "FixedParam",
    "FloatParam",
    "IntParam",
    "Param",
    "ParamValue",
    "resolve_space",
]


def resolve_space(name: str | None, params: Sequence[Param]) -> list[Param]:
    """The parameters a trial samples: the built-in space `name`, with `params` added.

    A parameter of `params` that has the name of a built-in one replaces it, which is how a
    user narrows a built-in space (a smaller range, fewer choices, or a fixed value).
    """
    if name is None:
        base: list[Param] = []
    elif name in BUILTIN_SPACES:
        base = list(BUILTIN_SPACES[name].params)
    else:
        known = ", ".join(sorted(BUILTIN_SPACES))
        raise InvalidSpecError("space.name", f"unknown space {name!r}; known spaces: {known}")
    overrides = {p.name: p for p in params}
    merged = [overrides.pop(p.name, p) for p in base]
    merged.extend(p for p in params if p.name in overrides)
    return merged
