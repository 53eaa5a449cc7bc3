"""The algorithm registry: samplers and pruners by the names a JobSpec uses.

Each entry says what it can do (multi-objective, constraints, backends), so that a combination
that cannot run is refused at submission instead of failing in a worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

ConstraintsFunc = Callable[["FrozenTrial"], Sequence[float]]


@dataclass(frozen=True)
class SamplerContext:
    """What a sampler factory may use to build a sampler for one job."""

    seed: int | None
    n_objectives: int
    constraints_func: ConstraintsFunc | None = None


@dataclass(frozen=True)
class SamplerEntry:
    name: str
    description: str
    build: Callable[[SamplerContext], optuna.samplers.BaseSampler]
    multi_objective: bool
    single_objective: bool = True
    constraints: bool = False
    backends: tuple[str, ...] = ("optuna",)


@dataclass(frozen=True)
class PrunerEntry:
    name: str
    description: str
    build: Callable[[], optuna.pruners.BasePruner]
    multi_objective: bool = False
    backends: tuple[str, ...] = ("optuna",)


SAMPLERS: dict[str, SamplerEntry] = {}
PRUNERS: dict[str, PrunerEntry] = {}


def register_sampler(entry: SamplerEntry) -> None:
    if entry.name in SAMPLERS:
        raise ValueError(f"a sampler named {entry.name!r} is already registered")
    SAMPLERS[entry.name] = entry


def register_pruner(entry: PrunerEntry) -> None:
    if entry.name in PRUNERS:
        raise ValueError(f"a pruner named {entry.name!r} is already registered")
    PRUNERS[entry.name] = entry


def _random(ctx: SamplerContext) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=ctx.seed)


def _tpe(ctx: SamplerContext) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.TPESampler(
        seed=ctx.seed, constraints_func=ctx.constraints_func, multivariate=True,
        n_startup_trials=5,
    )


def _nsga2(ctx: SamplerContext) -> optuna.samplers.BaseSampler:
    import optuna

    # Small populations suit the budgets of a search whose trials train models.
    return optuna.samplers.NSGAIISampler(
        seed=ctx.seed, constraints_func=ctx.constraints_func, population_size=8
    )


def _no_pruner() -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.NopPruner()


def _median() -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)


register_sampler(SamplerEntry(
    "random", "Uniform random sampling; the baseline.", _random,
    multi_objective=True,
))
register_sampler(SamplerEntry(
    "tpe", "Tree-structured Parzen Estimator (Bayesian); multivariate, multi-objective aware.",
    _tpe, multi_objective=True, constraints=True,
))
register_sampler(SamplerEntry(
    "nsga2", "NSGA-II genetic search for multi-objective fronts (population 8).", _nsga2,
    multi_objective=True, constraints=True,
))
register_pruner(PrunerEntry("none", "Never stop a trial early.", _no_pruner,
                            multi_objective=True))
register_pruner(PrunerEntry(
    "median",
    "Stop a trial whose validation accuracy is below the median of earlier trials at the same "
    "epoch (after 3 trials and from epoch 2).",
    _median,
))
