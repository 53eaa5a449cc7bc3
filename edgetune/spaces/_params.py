"""Parameter types of a search space: what a user writes, validated at once."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ParamValue = int | float | str | bool
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$"
MAX_CHOICES = 10_000
#: Bounds beyond this cannot be sampled as floats without losing integers (2**53).
MAX_MAGNITUDE = 2.0**53
MAX_GRID_POINTS = 1e15
#: A value a user writes: a choice, a fixed value, a value a condition waits for.
Choice = Annotated[str, Field(max_length=256)] | bool | int | float


class Condition(BaseModel):
    """When a parameter exists: only if `param` was sampled and took one of `values`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    param: str = Field(pattern=NAME_PATTERN, description="The parameter this one depends on.")
    values: list[Choice] = Field(min_length=1, max_length=MAX_CHOICES)

    def holds(self, values: Mapping[str, ParamValue]) -> bool:
        """True when `values` (the parameters sampled so far) has `param` at one of `values`."""
        if self.param not in values:
            return False
        sampled = values[self.param]
        return any(_same_value(sampled, v) for v in self.values)


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=NAME_PATTERN, description="Parameter name, as the trainer reads it.")
    condition: Condition | None = Field(
        default=None, description="Sample this parameter only when the condition holds."
    )


class FloatParam(_Param):
    """A real number in [low, high], optionally on a log scale or on a grid of `step`."""

    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step)
        return self

    def can_take(self, value: ParamValue) -> bool:
        """Whether sampling this parameter can give `value`."""
        return _on_grid(value, self.low, self.high, self.step)


class IntParam(_Param):
    """An integer in [low, high], optionally on a log scale or every `step`."""

    type: Literal["int"] = "int"
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_range(self.low, self.high, self.log, None if self.step == 1 else self.step)
        return self

    def can_take(self, value: ParamValue) -> bool:
        """Whether sampling this parameter can give `value`."""
        return _on_grid(value, self.low, self.high, self.step)


class CategoricalParam(_Param):
    """One of a list of choices (numbers, strings or booleans)."""

    type: Literal["categorical"] = "categorical"
    choices: list[Choice] = Field(min_length=1, max_length=MAX_CHOICES)

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        for choice in self.choices:
            if isinstance(choice, float) and not math.isfinite(choice):
                raise ValueError(f"choice {choice!r} is not a finite number")
        # Optuna stores a choice as its index, found with `choices.index`, so it cannot tell
        # apart choices that are equal in Python (1, True and 1.0; 0, False and -0.0): all are
        # stored as the first, while the trial had the one it drew. Python's hash agrees with
        # `==`, so a dict groups exactly the choices Optuna would take for one.
        alike: dict[ParamValue, list[ParamValue]] = {}
        for choice in self.choices:
            alike.setdefault(choice, []).append(choice)
        clashes = [same for same in alike.values() if len(same) > 1]
        if clashes:
            raise ValueError("; ".join(_clash(same) for same in clashes))
        return self

    def can_take(self, value: ParamValue) -> bool:
        """Whether sampling this parameter can give `value`."""
        return any(_same_value(value, choice) for choice in self.choices)


class FixedParam(_Param):
    """A parameter held at one value: narrows a built-in space without searching it."""

    type: Literal["fixed"] = "fixed"
    value: Choice

    def can_take(self, value: ParamValue) -> bool:
        """Whether sampling this parameter can give `value`."""
        return _same_value(value, self.value)


Param = Annotated[
    FloatParam | IntParam | CategoricalParam | FixedParam, Field(discriminator="type")
]


def _clash(same: list[ParamValue]) -> str:
    """Why choices that are equal in Python cannot all be choices, for an error message."""
    first = same[0]
    if all(type(c) is type(first) and repr(c) == repr(first) for c in same):
        return f"choice {first!r} is given {'twice' if len(same) == 2 else f'{len(same)} times'}"
    listed = ", ".join(repr(c) for c in same)
    return (f"choices {listed} are one choice to Optuna, which tells choices apart with `==` "
            f"and would record each as {first!r}; keep one of them")


def _same_value(a: ParamValue, b: ParamValue) -> bool:
    """Whether two parameter values are the same: a bool or a string equals only its own kind
    (so `True` is not `1`); numbers compare by value, floats up to rounding, because Optuna
    computes a point of a float grid as `low + k * step`."""
    if isinstance(a, bool | str) or isinstance(b, bool | str):
        return type(a) is type(b) and a == b
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _on_grid(value: ParamValue, low: float, high: float, step: float | None) -> bool:
    """Whether `value` is a number in [low, high], on the grid `low + k * step` if any."""
    if isinstance(value, bool | str) or not math.isfinite(value):
        return False
    if step is None:
        return low <= value <= high
    k = round((value - low) / step)
    return 0 <= k <= round((high - low) / step) and _same_value(low + k * step, value)


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if abs(low) > MAX_MAGNITUDE or abs(high) > MAX_MAGNITUDE:
        raise ValueError(f"`low` and `high` must lie within +-{MAX_MAGNITUDE:g}")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("`low` and `high` must be finite numbers")
    if low > high:
        raise ValueError(f"`low` is {low}, but must be <= `high` ({high})")
    if log and low <= 0:
        raise ValueError(f"`low` is {low}, but must be > 0 when `log` is true")
    if log and step is not None:
        raise ValueError("`step` cannot be combined with `log`")
    if step is not None:
        n = (high - low) / step
        if not math.isfinite(n) or n > MAX_GRID_POINTS:
            raise ValueError(
                f"`step` {step} makes more than {MAX_GRID_POINTS:g} values in [{low}, {high}]"
            )
        if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
            raise ValueError(f"`step` {step} does not divide the range [{low}, {high}]")


def finite_values(p: Param) -> list[ParamValue] | None:
    """Every value `p` can take, in order; None for a float without `step`, which has no
    finite list."""
    if isinstance(p, CategoricalParam):
        return list(p.choices)
    if isinstance(p, FixedParam):
        return [p.value]
    if isinstance(p, IntParam):
        return list(range(p.low, p.high + 1, p.step or 1))
    if p.step is None:
        return None
    n = round((p.high - p.low) / p.step)
    return [round(p.low + i * p.step, 12) for i in range(n + 1)]
