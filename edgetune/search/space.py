"""Sampling a resolved space through an Optuna trial (define-by-run, so that conditions fit)."""

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
from edgetune.storage.optuna_storage import params_in_one_write

if TYPE_CHECKING:
    import optuna


def suggest(trial: optuna.Trial, params: Sequence[Param]) -> dict[str, ParamValue]:
    """Ask `trial` for a value of every active parameter; fixed parameters pass through.

    `params` must come in the order `resolve_space` gives, each after the parameter its
    condition names. A parameter is active when it has no condition, or when its condition's
    parameter was sampled (was itself active) and took one of the condition's values; the
    result holds the active parameters only. On the service's database the suggested values
    are stored together, in one transaction (`params_in_one_write`).
    """
    values: dict[str, ParamValue] = {}
    with params_in_one_write(trial):
        for p in params:
            if p.condition is not None and not p.condition.holds(values):
                continue
            values[p.name] = _suggest_one(trial, p)
    return values


def _suggest_one(trial: optuna.Trial, p: Param) -> ParamValue:
    if isinstance(p, FloatParam):
        return trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
    if isinstance(p, IntParam):
        return trial.suggest_int(p.name, p.low, p.high, log=p.log, step=p.step)
    if isinstance(p, CategoricalParam):
        return cast(ParamValue, trial.suggest_categorical(p.name, p.choices))
    if isinstance(p, FixedParam):
        return p.value
    raise TypeError(f"unknown parameter type {type(p).__name__}")  # pragma: no cover


def to_optuna_distributions(
    params: Sequence[Param],
) -> dict[str, optuna.distributions.BaseDistribution]:
    """The Optuna distribution of each searched parameter; fixed ones are left out, since
    Optuna never samples them. Conditions are not part of a distribution."""
    from optuna.distributions import (
        BaseDistribution,
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    distributions: dict[str, BaseDistribution] = {}
    for p in params:
        if isinstance(p, FloatParam):
            distributions[p.name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            distributions[p.name] = IntDistribution(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, CategoricalParam):
            distributions[p.name] = CategoricalDistribution(p.choices)
    return distributions


def clip_to_space(values: dict[str, ParamValue], params: Sequence[Param]) -> dict[str, ParamValue]:
    """`values` moved to the nearest valid value of each parameter: within bounds, on the step,
    an int for an int; a categorical value that is not a choice keeps its old place. Used on
    values that an algorithm changed outside the sampler (PBT's perturbations)."""
    out = dict(values)
    for p in params:
        if p.name not in out or not isinstance(p, FloatParam | IntParam):
            continue
        value = min(max(float(out[p.name]), p.low), p.high)
        if p.step is not None:
            value = p.low + round((value - p.low) / p.step) * p.step
            value = min(value, p.high)
        out[p.name] = round(value) if isinstance(p, IntParam) else value
    return out
