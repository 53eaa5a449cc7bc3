"""Sampling a resolved space through real Optuna studies, and its Optuna distributions."""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from edgetune.search.registry import SAMPLERS, AlgorithmContext
from edgetune.search.space import suggest, to_optuna_distributions
from edgetune.spaces import (
    CategoricalParam,
    Condition,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    ParamValue,
    resolve_space,
)
from edgetune.spec import JobSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)

# A chain three deep (nesterov_gamma <- nesterov <- momentum <- optimizer), a branch on the
# other choice, a condition on a float grid and a fixed parameter that is conditional. Given
# out of order on purpose: resolve_space must sort it.
CHAIN: list[Param] = [
    FixedParam(name="nesterov_gamma", value=0.5, condition=Condition(param="nesterov",
                                                                     values=[True])),
    CategoricalParam(name="nesterov", choices=[True, False],
                     condition=Condition(param="momentum", values=[0.3, 0.9])),
    FloatParam(name="momentum", low=0.0, high=0.9, step=0.3,
               condition=Condition(param="optimizer", values=["sgd"])),
    FloatParam(name="beta1", low=0.8, high=0.99, condition=Condition(param="optimizer",
                                                                     values=["adam"])),
    CategoricalParam(name="optimizer", choices=["sgd", "adam"]),
    IntParam(name="layers", low=1, high=4),
]


def expected_active(values: dict[str, ParamValue]) -> set[str]:
    """The chain's active parameters, worked out by hand from the sampled values."""
    active = {"optimizer", "layers"}
    if values["optimizer"] == "adam":
        active.add("beta1")
    if values["optimizer"] == "sgd":
        active.add("momentum")
        if round(float(values["momentum"]) * 10) in (3, 9):
            active.add("nesterov")
            if values["nesterov"] is True:
                active.add("nesterov_gamma")
    return active


def registered(name: str) -> Callable[[], optuna.samplers.BaseSampler]:
    """A sampler as a job builds it (TPE is multivariate there)."""
    spec = JobSpec(name="chain", seed=1)
    return lambda: SAMPLERS[name].build(AlgorithmContext(spec, resolve_space(None, CHAIN)))


# Every registered sampler for one objective except the grid, which needs a step on `beta1`.
ONE_OBJECTIVE = [n for n, e in SAMPLERS.items() if e.single_objective and n != "grid"]


@pytest.mark.parametrize(
    "sampler",
    [*(registered(n) for n in ONE_OBJECTIVE),
     lambda: optuna.samplers.TPESampler(seed=1, n_startup_trials=10)],
    ids=[*ONE_OBJECTIVE, "independent-tpe"],
)
def test_a_conditional_chain_samples_exactly_the_active_parameters(
    sampler: Callable[[], optuna.samplers.BaseSampler],
) -> None:
    space = resolve_space(None, CHAIN)
    seen: list[dict[str, ParamValue]] = []

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, space)
        seen.append(values)
        return float(values["layers"])

    study = optuna.create_study(sampler=sampler())
    study.optimize(objective, n_trials=30)

    distributions = to_optuna_distributions(space)
    for values, trial in zip(seen, study.trials, strict=True):
        active = expected_active(values)
        assert set(values) == active
        # Optuna records the searched ones; the fixed one is ours alone.
        assert set(trial.params) == active - {"nesterov_gamma"}
        assert trial.params == {k: v for k, v in values.items() if k != "nesterov_gamma"}
        assert trial.distributions == {k: distributions[k] for k in trial.params}
        if "nesterov_gamma" in values:
            assert values["nesterov_gamma"] == 0.5
    # Every parameter is active in some trial and every conditional one inactive in another:
    # for an unseeded random sampler the rarest, nesterov_gamma (1 trial in 8), never shows up
    # in 30 trials with probability 0.875**30 = 2%, but the seeds make this run deterministic.
    counts = {p.name: sum(p.name in v for v in seen) for p in space}
    assert all(0 < n < 30 for name, n in counts.items() if name not in ("optimizer", "layers"))


def test_a_parameter_whose_condition_names_an_inactive_parameter_is_not_sampled() -> None:
    space = resolve_space(
        None,
        [
            CategoricalParam(name="a", choices=["on", "off"]),
            FixedParam(name="b", value=1, condition=Condition(param="a", values=["on"])),
            # b would satisfy this, but b is not there.
            IntParam(name="c", low=0, high=3, condition=Condition(param="b", values=[1])),
            FixedParam(name="d", value="x"),
        ],
    )
    study = optuna.create_study()
    study.enqueue_trial({"a": "off"})
    trial = study.ask()
    assert suggest(trial, space) == {"a": "off", "d": "x"}
    assert trial.params == {"a": "off"}


def test_conditions_match_values_by_kind() -> None:
    space = resolve_space(
        None,
        [
            CategoricalParam(name="flag", choices=[True]),
            CategoricalParam(name="count", choices=[1]),
            FixedParam(name="on_flag", value=0, condition=Condition(param="flag", values=[True])),
            FixedParam(name="on_count", value=0, condition=Condition(param="count", values=[1.0])),
        ],
    )
    assert set(suggest(optuna.create_study().ask(), space)) == {
        "flag", "count", "on_flag", "on_count",
    }


def test_each_searched_parameter_has_its_optuna_distribution() -> None:
    params: list[Param] = [
        FloatParam(name="lr", low=1e-4, high=1e-1, log=True),
        FloatParam(name="dropout", low=0.0, high=0.5, step=0.1),
        IntParam(name="width", low=16, high=256, log=True),
        IntParam(name="channels", low=8, high=48, step=8),
        CategoricalParam(name="act", choices=["relu", "gelu"]),
        CategoricalParam(name="mixed", choices=[3, True, 0.5, "x"],
                         condition=Condition(param="act", values=["relu"])),
        FixedParam(name="arch", value="cnn"),
    ]
    assert to_optuna_distributions(params) == {
        "lr": FloatDistribution(1e-4, 1e-1, log=True),
        "dropout": FloatDistribution(0.0, 0.5, step=0.1),
        "width": IntDistribution(16, 256, log=True),
        "channels": IntDistribution(8, 48, step=8),
        "act": CategoricalDistribution(["relu", "gelu"]),
        "mixed": CategoricalDistribution([3, True, 0.5, "x"]),
    }
    assert to_optuna_distributions([]) == {}
