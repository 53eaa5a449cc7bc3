"""The algorithm registry: samplers, pruners and schedulers by the names a JobSpec uses.

Each entry says what it can do (one or several objectives, constraints, which backends, which
`algorithm.options` it reads), so that a combination that cannot run is refused at submission
instead of failing in a worker. Pruners are Optuna's (they run on the optuna backend, where a
trial reports to the study); schedulers are Ray Tune's (the ray backend); `none` and
`hyperband` exist on both.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgetune.spaces import CategoricalParam, FloatParam, IntParam, Param
from edgetune.spec import JobSpec, OptionValue

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from edgetune.search.samplers import Reward

ConstraintsFunc = Callable[["FrozenTrial"], Sequence[float]]
BACKENDS = ("optuna", "ray")


@dataclass(frozen=True)
class AlgorithmContext:
    """What a factory may use to build a sampler, pruner or scheduler for one job."""

    spec: JobSpec
    #: The job's resolved space, targets before the parameters their conditions name.
    params: Sequence[Param]
    constraints_func: ConstraintsFunc | None = None

    @property
    def seed(self) -> int | None:
        return self.spec.seed

    @property
    def options(self) -> Mapping[str, OptionValue]:
        return self.spec.algorithm.options


@dataclass(frozen=True)
class Option:
    """A setting under `algorithm.options`: what it means, its rule, and its check."""

    rule: str
    check: Callable[[object], bool]


@dataclass(frozen=True)
class SamplerEntry:
    name: str
    description: str
    build: Callable[[AlgorithmContext], optuna.samplers.BaseSampler]
    multi_objective: bool
    single_objective: bool = True
    constraints: bool = False
    backends: tuple[str, ...] = BACKENDS
    options: tuple[str, ...] = ()
    #: The most trials the sampler can propose for a space (a grid's size); None: unbounded.
    max_trials: Callable[[Sequence[Param]], int] | None = None


@dataclass(frozen=True)
class PrunerEntry:
    """A way to stop trials early: an Optuna pruner, a Ray Tune scheduler, or both."""

    name: str
    description: str
    optuna: Callable[[AlgorithmContext], optuna.pruners.BasePruner] | None = None
    ray: Callable[[AlgorithmContext], Any] | None = None  # a ray.tune TrialScheduler
    multi_objective: bool = False
    single_objective: bool = True
    options: tuple[str, ...] = ()
    #: Restarts trials from other trials' checkpoints with changed parameters (PBT).
    mutates: bool = False

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(b for b in BACKENDS if getattr(self, b) is not None)


SAMPLERS: dict[str, SamplerEntry] = {}
PRUNERS: dict[str, PrunerEntry] = {}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(low: int) -> Callable[[object], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


OPTIONS: dict[str, Option] = {
    "population_size": Option("an integer >= 2", _int_at_least(2)),
    "n_startup_trials": Option("an integer >= 0", _int_at_least(0)),
    "multivariate": Option("true or false", lambda v: isinstance(v, bool)),
    "reduction_factor": Option("an integer >= 2", _int_at_least(2)),
    "min_resource": Option("an integer >= 1 (epochs)", _int_at_least(1)),
    "perturbation_interval": Option("an integer >= 1 (epochs)", _int_at_least(1)),
    "rung_correlation": Option(
        "a number in [0, 1]: the Spearman correlation, over the job's complete trials, between "
        "the accuracy at an epoch and the final accuracy that the epoch and every later one "
        "need for the epoch to hold a rung; 0 puts rungs at min_resource x "
        "reduction_factor^k whatever it is",
        lambda v: _number(v) and 0 <= float(v) <= 1,  # type: ignore[arg-type]
    ),
    "min_trials_for_rungs": Option(
        "an integer >= 3: complete trials needed to measure that correlation; until then no "
        "trial is stopped", _int_at_least(3),
    ),
    "reward": Option(
        "'mnasnet' (ACC*(LAT/T)^w), 'mnasnet-hard' (w = 0 within the target, -1 past it), "
        "'pareto' (Pareto rank and hypervolume contribution over all objectives) or "
        "'scalarized' (random weights over all objectives)",
        lambda v: v in ("mnasnet", "mnasnet-hard", "pareto", "scalarized"),
    ),
    "latency_target_ms": Option("a number > 0", lambda v: _number(v) and float(v) > 0),  # type: ignore[arg-type]
    "latency_weight": Option("a number < 0 (MnasNet uses -0.07)",
                             lambda v: _number(v) and float(v) < 0),  # type: ignore[arg-type]
}


def register_sampler(entry: SamplerEntry) -> None:
    if entry.name in SAMPLERS:
        raise ValueError(f"a sampler named {entry.name!r} is already registered")
    SAMPLERS[entry.name] = entry


def register_pruner(entry: PrunerEntry) -> None:
    if entry.name in PRUNERS:
        raise ValueError(f"a pruner named {entry.name!r} is already registered")
    PRUNERS[entry.name] = entry


def _option(ctx: AlgorithmContext, name: str, default: Any) -> Any:
    return ctx.options.get(name, default)


# --- samplers ------------------------------------------------------------------------------
def _grid(ctx: AlgorithmContext) -> optuna.samplers.BaseSampler:
    from edgetune.search.samplers import SpaceGridSampler

    return SpaceGridSampler(ctx.params, seed=ctx.seed)


def _grid_size(params: Sequence[Param]) -> int:
    from edgetune.search.samplers import grid_size

    return grid_size(params)


def _random(ctx: AlgorithmContext) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=ctx.seed)


def _tpe(ctx: AlgorithmContext, *, startup: int) -> optuna.samplers.BaseSampler:
    import optuna

    # Independent by default: one Parzen estimator per parameter, so a candidate can combine
    # the good value of one parameter from one trial with that of another from another trial.
    # A multivariate TPE draws each candidate near one good trial, all parameters together,
    # and never recombines: on DTLZ2 (12 variables, 3 objectives) motpe then ended below random
    # search after 200 trials (53.46 against 53.80, mean of 3 seeds), and independent motpe
    # reaches 55.92. Conditional parameters need no grouping: a parameter's estimator sees
    # the trials where it was active.
    multivariate = bool(_option(ctx, "multivariate", False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # `group` splits a conditional space into the subspaces trials actually share, so the
        # multivariate model never mixes active and inactive parameters.
        return optuna.samplers.TPESampler(
            seed=ctx.seed, constraints_func=ctx.constraints_func, multivariate=multivariate,
            group=multivariate, n_startup_trials=_option(ctx, "n_startup_trials", startup),
        )


def _gp(ctx: AlgorithmContext) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.GPSampler(
        seed=ctx.seed, constraints_func=ctx.constraints_func,
        n_startup_trials=_option(ctx, "n_startup_trials", 10), warn_independent_sampling=False,
    )


def _cmaes(ctx: AlgorithmContext) -> optuna.samplers.BaseSampler:
    import optuna

    from edgetune.errors import MissingDependencyError

    try:
        import cmaes  # noqa: F401
    except ImportError as e:  # pragma: no cover - a core dependency
        raise MissingDependencyError("cmaes", "core") from e
    # Categorical parameters (architectures) are outside CMA-ES's continuous model; they are
    # sampled at random, which is what Optuna does too, without the warning on every trial.
    return optuna.samplers.CmaEsSampler(
        seed=ctx.seed, n_startup_trials=_option(ctx, "n_startup_trials", 1),
        warn_independent_sampling=False,
    )


def _nsga(ctx: AlgorithmContext, *, version: int) -> optuna.samplers.BaseSampler:
    import optuna

    kind = optuna.samplers.NSGAIISampler if version == 2 else optuna.samplers.NSGAIIISampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Small populations suit the budgets of a search whose trials train models.
        return kind(seed=ctx.seed, constraints_func=ctx.constraints_func,
                    population_size=_option(ctx, "population_size", 8))


def _rl(ctx: AlgorithmContext) -> optuna.samplers.BaseSampler:
    from edgetune.search.samplers import RLSampler

    return RLSampler(reward=rl_reward(ctx), seed=ctx.seed)


def rl_reward(ctx: AlgorithmContext) -> Reward:
    """The RL controller's reward for a job: MnasNet's ACC*(LAT/T)^w when it has accuracy and
    a latency target (a `latency_ms <=` constraint or `latency_target_ms`), else the Pareto
    reward (rank, and share of the hypervolume for front trials) over its objectives, or with
    `reward: scalarized` a sum of its objectives under random weights. Constraints not in the
    reward make an infeasible candidate earn the lowest reward of the history."""
    from edgetune.search.constraints import violations
    from edgetune.search.samplers import MnasNetReward, ParetoReward, ScalarizedReward

    spec = ctx.spec
    kind = _option(ctx, "reward", None)
    latency = next((c for c in spec.constraints if c.metric == "latency_ms" and c.op == "<="),
                   None)
    latency_key = latency.key if latency else next(
        (o.key for o in spec.objectives if o.name == "latency_ms"), None
    )
    target = _option(ctx, "latency_target_ms", latency.bound if latency else None)
    has_accuracy = any(o.name == "accuracy" for o in spec.objectives)
    reward: Reward
    others = list(spec.constraints)
    if kind not in ("scalarized", "pareto") and has_accuracy and latency_key and (
        target is not None
    ):
        reward = MnasNetReward(
            accuracy_key="accuracy", latency_key=latency_key, target_ms=float(target),
            weight=float(_option(ctx, "latency_weight", -0.07)), hard=kind == "mnasnet-hard",
        )
        others = [c for c in others if c is not latency]
    elif kind == "scalarized":
        reward = ScalarizedReward(directions=spec.directions, seed=ctx.seed)
    else:
        reward = ParetoReward(directions=spec.directions)
    if not others:
        return reward

    def constrained(trials: Sequence[FrozenTrial]) -> list[float | None]:
        rewards = reward(trials)
        feasible = [
            all(v <= 0 for v in violations(others, t.user_attrs)) for t in trials
        ]
        lowest = min((r for r, ok in zip(rewards, feasible, strict=True)
                      if r is not None and ok), default=None)
        return [r if ok or r is None or lowest is None else min(r, lowest)
                for r, ok in zip(rewards, feasible, strict=True)]

    return constrained


register_sampler(SamplerEntry(
    "grid", "Every combination of a space whose parameters all have finite values "
            "(choices, ints, floats with a step), once each, in a seeded order.",
    _grid, multi_objective=True, max_trials=_grid_size,
))
register_sampler(SamplerEntry(
    "random", "Uniform random sampling; the baseline.", _random, multi_objective=True,
))
register_sampler(SamplerEntry(
    "tpe", "Tree-structured Parzen Estimator (Bayesian), one estimator per parameter "
           "(`multivariate: true` for a joint, grouped one); 5 random trials first.",
    lambda ctx: _tpe(ctx, startup=5), multi_objective=True, constraints=True,
    options=("n_startup_trials", "multivariate"),
))
register_sampler(SamplerEntry(
    "motpe", "Multi-objective TPE (Ozaki et al. 2020): TPE whose good group is the best "
             "non-dominated trials; one estimator per parameter (`multivariate: true` for a "
             "joint, grouped one); 10 random trials first.",
    lambda ctx: _tpe(ctx, startup=10), multi_objective=True, single_objective=False,
    constraints=True, options=("n_startup_trials", "multivariate"),
))
register_sampler(SamplerEntry(
    "gp", "Gaussian-process Bayesian optimization (logEI; log-EHVI for several objectives); "
          "10 random trials first. Best for small budgets of continuous parameters.",
    _gp, multi_objective=True, constraints=True, options=("n_startup_trials",),
))
register_sampler(SamplerEntry(
    "cmaes", "CMA-ES evolution strategy for one objective over continuous parameters "
             "(categorical ones are sampled at random).",
    _cmaes, multi_objective=False, options=("n_startup_trials",),
))
register_sampler(SamplerEntry(
    "nsga2", "NSGA-II genetic search for multi-objective fronts (population 8).",
    lambda ctx: _nsga(ctx, version=2), multi_objective=True, constraints=True,
    options=("population_size",),
))
register_sampler(SamplerEntry(
    "nsga3", "NSGA-III: NSGA-II with reference directions, for three or more objectives "
             "(population 8).",
    lambda ctx: _nsga(ctx, version=3), multi_objective=True, single_objective=False,
    constraints=True, options=("population_size",),
))
register_sampler(SamplerEntry(
    "rl", "The RL controller: a policy over the space's choices trained with PPO-style "
          "clipped policy-gradient steps, rewarded by MnasNet's ACC*(LAT/T)^w, by Pareto rank "
          "and hypervolume contribution, or by a randomly weighted sum of the objectives.",
    _rl, multi_objective=True, constraints=True,
    options=("reward", "latency_target_ms", "latency_weight"),
))


# --- pruners (optuna) and schedulers (ray) ------------------------------------------------
#: What early stopping compares in place of a metric that is only known once a trial is done:
#: latency is measured on the exported model, and the exported size depends on compression,
#: but FLOPs and parameters are known from the architecture at every epoch.
STAND_INS = {"latency_ms": "flops", "size_bytes": "params"}


def progress_metric(metric: str, reported: Sequence[str]) -> str | None:
    """The reported metric that early stopping compares for objective `metric`, or None."""
    if metric in reported:
        return metric
    stand_in = STAND_INS.get(metric)
    return stand_in if stand_in in reported else None


def _max_epochs(ctx: AlgorithmContext) -> int:
    return ctx.spec.trainer.epochs


def _no_pruner(ctx: AlgorithmContext) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.NopPruner()


def _fifo(ctx: AlgorithmContext) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _median(ctx: AlgorithmContext) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)


#: The correlation a rung needs by default: at 0.7 an early score orders about three pairs of
#: trials in four as their final scores do (Kendall's tau near 0.5).
RUNG_CORRELATION = 0.7
MIN_TRIALS_FOR_RUNGS = 6


def _fidelity_halving(ctx: AlgorithmContext) -> optuna.pruners.BasePruner | None:
    """Successive halving with rungs where early scores rank trials as final ones do; None
    when `rung_correlation` is 0 (fixed rungs, as before it existed)."""
    from edgetune.search.schedulers import FidelityHalvingPruner

    threshold = float(_option(ctx, "rung_correlation", RUNG_CORRELATION))
    if threshold == 0:
        return None
    return FidelityHalvingPruner(
        rung_correlation=threshold,
        min_trials_for_rungs=_option(ctx, "min_trials_for_rungs", MIN_TRIALS_FOR_RUNGS),
        min_resource=_option(ctx, "min_resource", 1),
        reduction_factor=_option(ctx, "reduction_factor", 3),
    )


def _sha(ctx: AlgorithmContext) -> optuna.pruners.BasePruner:
    import optuna

    pruner = _fidelity_halving(ctx)
    if pruner is not None:
        return pruner
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=_option(ctx, "min_resource", 1),
        reduction_factor=_option(ctx, "reduction_factor", 3),
    )


def _hyperband(ctx: AlgorithmContext) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.HyperbandPruner(
        min_resource=_option(ctx, "min_resource", 1), max_resource=_max_epochs(ctx),
        reduction_factor=_option(ctx, "reduction_factor", 3),
    )


def _mo_asha(ctx: AlgorithmContext) -> optuna.pruners.BasePruner:
    from edgetune.search.schedulers import MOASHAPruner

    pruner = _fidelity_halving(ctx)
    if pruner is not None:
        return pruner
    return MOASHAPruner(
        min_resource=_option(ctx, "min_resource", 1),
        reduction_factor=_option(ctx, "reduction_factor", 3),
    )


def _ray_asha(ctx: AlgorithmContext) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch", max_t=_max_epochs(ctx),
        grace_period=_option(ctx, "min_resource", 1),
        reduction_factor=_option(ctx, "reduction_factor", 3),
    )


def _ray_hyperband(ctx: AlgorithmContext) -> Any:
    from ray.tune.schedulers import HyperBandScheduler

    return HyperBandScheduler(
        time_attr="epoch", max_t=_max_epochs(ctx),
        reduction_factor=_option(ctx, "reduction_factor", 3),
    )


def _ray_pbt(ctx: AlgorithmContext) -> Any:
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    from edgetune.search.space import clip_to_space

    mutable = set(pbt_mutable(ctx.spec, ctx.params))
    mutations: dict[str, Any] = {}
    for p in ctx.params:
        if p.name not in mutable:
            continue
        if isinstance(p, CategoricalParam):
            mutations[p.name] = list(p.choices)
        elif isinstance(p, FloatParam):
            mutations[p.name] = (tune.loguniform if p.log else tune.uniform)(p.low, p.high)
        elif isinstance(p, IntParam):
            mutations[p.name] = tune.randint(p.low, p.high + 1)
    params = list(ctx.params)

    def clip(config: dict[str, Any]) -> dict[str, Any]:
        # Perturbing multiplies by 0.8 or 1.2, which can leave the space; pull values back in.
        config["params"] = clip_to_space(config["params"], params)
        return config

    return PopulationBasedTraining(
        time_attr="epoch", perturbation_interval=_option(ctx, "perturbation_interval", 1),
        hyperparam_mutations={"params": mutations}, custom_explore_fn=clip,
    )


def pbt_mutable(spec: JobSpec, params: Sequence[Param]) -> list[str]:
    """The parameters PBT may change for this job (its trainer's mutable, unconditioned ones)."""
    from edgetune.trainers import get_trainer_class

    trainer = get_trainer_class(spec.trainer.name)
    return [p.name for p in params if trainer.is_mutable(p.name) and p.condition is None
            and isinstance(p, CategoricalParam | FloatParam | IntParam)]


register_pruner(PrunerEntry(
    "none", "Never stop a trial early.", optuna=_no_pruner, ray=_fifo, multi_objective=True,
))
register_pruner(PrunerEntry(
    "median",
    "Stop a trial whose progress is worse than the median of earlier trials at the same "
    "epoch (after 3 trials and from epoch 2).",
    optuna=_median,
))
#: What successive halving with correlated rungs reads.
_FIDELITY_OPTIONS = ("min_resource", "reduction_factor", "rung_correlation",
                     "min_trials_for_rungs")

register_pruner(PrunerEntry(
    "sha", "Asynchronous successive halving: at a rung keep the best third of the trials that "
           "reached it. Rungs start at the first epoch (>= min_resource) from which accuracy ranks "
           "the complete trials as their final accuracy does (Spearman >= rung_correlation, "
           "0.7, at it and every later epoch; measured once min_trials_for_rungs, 6, are "
           "complete; no rung before), then every reduction_factor (3) times further, never "
           "at the last epoch. rung_correlation 0: Optuna's "
           "SuccessiveHalvingPruner at epochs 1, 3, 9, ...",
    optuna=_sha, options=_FIDELITY_OPTIONS,
))
register_pruner(PrunerEntry(
    "hyperband", "Hyperband: successive halving over several brackets of early-stopping "
                 "aggressiveness (Optuna's pruner, or Ray Tune's scheduler on ray).",
    optuna=_hyperband, ray=_ray_hyperband, options=("min_resource", "reduction_factor"),
))
register_pruner(PrunerEntry(
    "asha", "Ray Tune's asynchronous successive halving scheduler.",
    ray=_ray_asha, options=("min_resource", "reduction_factor"),
))
register_pruner(PrunerEntry(
    "pbt", "Ray Tune's Population Based Training: every epoch, the worst quarter of trials "
           "restart from a top trial's checkpoint with perturbed training parameters.",
    ray=_ray_pbt, options=("perturbation_interval",), mutates=True,
))
register_pruner(PrunerEntry(
    "mo-asha", "Multi-objective asynchronous successive halving (ours): at each rung, keep "
               "the best third by non-dominated rank, then crowding distance. Rungs as sha's: "
               "where reported values rank the complete trials as their final values do (the "
               "weakest objective that changes during training counts). "
               "rung_correlation 0: rungs at epochs 1, 3, 9, ...",
    optuna=_mo_asha, multi_objective=True, single_objective=False,
    options=_FIDELITY_OPTIONS,
))
