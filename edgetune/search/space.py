"""Sampling a resolved space through an Optuna trial (define-by-run, so conditions fit later)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from edgetune.spaces import (
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    ParamValue,
)

if TYPE_CHECKING:
    import optuna


def suggest(trial: optuna.Trial, params: Sequence[Param]) -> dict[str, ParamValue]:
    """Ask `trial` for a value of every parameter; fixed parameters pass through as they are."""
    values: dict[str, ParamValue] = {}
    for p in params:
        if isinstance(p, FloatParam):
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            values[p.name] = trial.suggest_int(p.name, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, CategoricalParam):
            values[p.name] = cast(ParamValue, trial.suggest_categorical(p.name, p.choices))
        elif isinstance(p, FixedParam):
            values[p.name] = p.value
        else:  # pragma: no cover - the Param union is closed
            raise TypeError(f"unknown parameter type {type(p).__name__}")
    return values
