"""Search spaces: parameter types, validation and the built-in NAS spaces. Pure Python."""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Sequence

from edgetune.errors import InvalidSpecError
from edgetune.spaces._builtin import BUILTIN_SPACES, BuiltinSpace
from edgetune.spaces._params import (
    CategoricalParam,
    Condition,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    ParamValue,
    finite_values,
)

MAX_PARAMS = 1_000
#: How many names or choices an error message lists before it says how many more there are.
_LISTED = 20

__all__ = [
    "BUILTIN_SPACES",
    "MAX_PARAMS",
    "BuiltinSpace",
    "CategoricalParam",
    "Condition",
    "FixedParam",
    "FloatParam",
    "IntParam",
    "Param",
    "ParamValue",
    "finite_values",
    "resolve_space",
]


def resolve_space(name: str | None, params: Sequence[Param]) -> list[Param]:
    """The parameters a trial samples: the built-in space `name`, with `params` added.

    A parameter of `params` that has the name of a built-in one replaces it, which is how a
    user narrows a built-in space (a smaller range, fewer choices, or a fixed value). The
    built-in parameters that depend on a narrowed one follow it: their conditions keep only the
    values it can still take, and one that can never be sampled is left out (narrowing `mlp`'s
    `n_layers` to 1..2 leaves out `width_3` and `width_4`).

    The result lists each conditional parameter after the one its condition names, and is
    otherwise in the given order (built-in parameters first), so that a define-by-run sampler
    knows a condition's value before it decides whether to sample the parameter.

    Raises `InvalidSpecError` for a space that cannot be sampled: repeated names, too many
    parameters, a condition on an unknown parameter, on a value its parameter never takes,
    on a continuous float, or conditions that form a cycle.
    """
    if name is None:
        base: list[Param] = []
    elif name in BUILTIN_SPACES:
        base = list(BUILTIN_SPACES[name].params)
    else:
        known = ", ".join(sorted(BUILTIN_SPACES))
        raise InvalidSpecError("space.name", f"unknown space {name!r}; known spaces: {known}")
    repeated = sorted(n for n, count in Counter(p.name for p in params).items() if count > 1)
    if repeated:
        raise InvalidSpecError(
            "space.params", f"parameter names must be unique; repeated: {', '.join(repeated)}"
        )
    overrides = {p.name: p for p in params}
    merged = [overrides.pop(p.name, p) for p in base]
    merged.extend(p for p in params if p.name in overrides)
    if len(merged) > MAX_PARAMS:
        raise InvalidSpecError(
            "space.params",
            f"the space has {len(merged)} parameters, but may have at most {MAX_PARAMS}",
        )
    own = {p.name for p in params}
    merged, dropped = _follow_narrowed_targets(merged, own)
    by_name = {p.name: p for p in merged}
    for p in merged:
        if p.condition is not None:
            _check_condition(p.name, p.condition, by_name, dropped)
    return _dependency_order(merged)


def _follow_narrowed_targets(
    params: list[Param], own: set[str]
) -> tuple[list[Param], dict[str, str]]:
    """`params` with the conditions of built-in parameters (those not in `own`) cut to the
    values their target can still take, and the built-in parameters that can never be active
    left out, with why (by name).

    A user who narrows `n_layers` of `mlp` to 1..2 means "no third or fourth layer", not a
    mistake, so `width_3` and `width_4` go, and with them whatever built-in parameter depends
    on them. A user's own parameter keeps its condition as written: one that can never hold
    is refused by `_check_condition`.
    """
    by_name = {p.name: p for p in params}
    dropped: dict[str, str] = {}
    changed = True
    while changed:  # until no condition changes: a dropped parameter may be another's target
        changed = False
        for name, p in list(by_name.items()):
            if p.condition is None or name in own:
                continue
            target = by_name.get(p.condition.param)
            if target is None:
                if p.condition.param not in dropped:
                    continue  # an unknown target is a bug of the space; the check names it
                why = dropped[p.condition.param]  # the first cause says most
            elif isinstance(target, FloatParam) and target.step is None:
                continue  # the check refuses a condition on a continuous float
            else:
                kept = [v for v in p.condition.values if target.can_take(v)]
                if len(kept) == len(p.condition.values):
                    continue
                if kept:
                    condition = Condition(param=target.name, values=kept)
                    by_name[name] = p.model_copy(update={"condition": condition})
                    changed = True
                    continue
                why = (f"{target.name!r} never takes "
                       f"{_listing([repr(v) for v in p.condition.values])}")
            del by_name[name]
            dropped[name] = why
            changed = True
    return [by_name[p.name] for p in params if p.name in by_name], dropped


def _check_condition(
    name: str, condition: Condition, by_name: dict[str, Param], dropped: dict[str, str]
) -> None:
    field = f"space.params.{name}.condition"
    target = by_name.get(condition.param)
    if target is None and condition.param in dropped:
        raise InvalidSpecError(
            field,
            f"{name!r} depends on {condition.param!r}, which the narrowed space never samples "
            f"({dropped[condition.param]}), so {name!r} would never be sampled",
        )
    if target is None:
        raise InvalidSpecError(
            field,
            f"{name!r} depends on {condition.param!r}, which is not a parameter of the space; "
            f"its parameters: {_listing(sorted(by_name))}",
        )
    if isinstance(target, FloatParam) and target.step is None:
        raise InvalidSpecError(
            field,
            f"{name!r} depends on the value of {target.name!r}, a float without `step`, which "
            f"takes any one value with probability zero; give {target.name!r} a `step` or "
            "make it categorical",
        )
    never = [v for v in condition.values if not target.can_take(v)]
    if never:
        raise InvalidSpecError(
            field,
            f"{target.name!r} never takes {_listing([repr(v) for v in never])}, so {name!r} "
            f"would never be sampled; {target.name!r} takes {_takes(target)}",
        )


def _takes(param: Param) -> str:
    """The values `param` takes, in words, for an error message."""
    if isinstance(param, FixedParam):
        return f"only {param.value!r}"
    if isinstance(param, CategoricalParam):
        return f"one of {_listing([repr(c) for c in param.choices])}"
    every = f" every {param.step}" if param.step not in (None, 1) else ""
    kind = "integers" if isinstance(param, IntParam) else "numbers"
    return f"{kind} in [{param.low}, {param.high}]{every}"


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown if len(items) <= _LISTED else f"{shown} and {len(items) - _LISTED} more"


def _dependency_order(params: list[Param]) -> list[Param]:
    """`params` with each parameter after the one its condition names; ties keep their order
    (a topological sort that always takes the earliest parameter whose target is placed)."""
    dependents: defaultdict[str, list[int]] = defaultdict(list)
    ready: list[int] = []
    for i, p in enumerate(params):
        if p.condition is None:
            ready.append(i)
        else:
            dependents[p.condition.param].append(i)
    order: list[Param] = []
    while ready:
        p = params[heapq.heappop(ready)]
        order.append(p)
        for i in dependents[p.name]:
            heapq.heappush(ready, i)
    if len(order) == len(params):
        return order
    # Each parameter depends on at most one other, so from any parameter left out, following
    # the conditions leads into a cycle.
    placed = {p.name for p in order}
    target = {p.name: p.condition.param for p in params if p.condition is not None}
    name = next(p.name for p in params if p.name not in placed)
    path: list[str] = []
    while name not in path:
        path.append(name)
        name = target[name]
    cycle = [*path[path.index(name):], name]
    raise InvalidSpecError(
        f"space.params.{cycle[0]}.condition",
        f"the conditions form a cycle, {' -> '.join(cycle)} (each depends on the next), so "
        "none of these parameters can ever be sampled",
    )
