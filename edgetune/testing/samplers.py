"""The sampler contract: every sampler of the registry (`SAMPLERS`), built as a job builds it
(from its `AlgorithmContext`, reseeded per trial by `TrialSeededSampler`), samples spaces through
`edgetune.search.space.suggest` on an in-memory Optuna study.

Subclass `SamplerTestCase` in a test module and give it a `sampler_name` fixture parametrized
over `SAMPLERS`. `registry_sampler` also serves Optuna's own suites
(`optuna.testing.pytest_samplers`), whose `sampler` fixture wants a factory.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import optuna
import pytest
from optuna.trial import TrialState

from edgetune.search.registry import SAMPLERS, AlgorithmContext, SamplerEntry
from edgetune.search.samplers import TrialSeededSampler
from edgetune.search.space import suggest
from edgetune.spaces import (
    CategoricalParam,
    Condition,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    ParamValue,
)
from edgetune.spec import JobSpec

#: Every kind of parameter, continuous ones included.
MIXED_SPACE: list[Param] = [
    FloatParam(name="lr", low=1e-4, high=1e-1, log=True),
    FloatParam(name="dropout", low=0.0, high=0.5),
    FloatParam(name="momentum", low=0.8, high=0.98, step=0.02),
    IntParam(name="width", low=8, high=64, step=8),
    IntParam(name="batch", low=16, high=256, log=True),
    CategoricalParam(name="act", choices=["relu", "gelu", "tanh"]),
    CategoricalParam(name="bits", choices=[4, 8, 16]),
    FixedParam(name="arch", value="mlp"),
]
#: Finite values only, so that a grid can list them: 4 * 3 * 3 * 2 = 72 points.
FINITE_SPACE: list[Param] = [
    FloatParam(name="x", low=0.0, high=0.75, step=0.25),
    IntParam(name="depth", low=1, high=3),
    CategoricalParam(name="act", choices=["relu", "gelu", "tanh"]),
    CategoricalParam(name="flag", choices=[True, False]),
    FixedParam(name="arch", value="mlp"),
]
#: Parameters that exist only when another took some value (targets first, as
#: `resolve_space` orders them); finite, so that a grid can list them too.
CONDITIONAL_SPACE: list[Param] = [
    IntParam(name="n_layers", low=1, high=3),
    IntParam(name="width_1", low=8, high=32, step=8),
    IntParam(name="width_2", low=8, high=32, step=8,
             condition=Condition(param="n_layers", values=[2, 3])),
    IntParam(name="width_3", low=8, high=32, step=8,
             condition=Condition(param="n_layers", values=[3])),
    CategoricalParam(name="optimizer", choices=["sgd", "adam"]),
    FloatParam(name="momentum", low=0.0, high=0.9, step=0.3,
               condition=Condition(param="optimizer", values=["sgd"])),
]
#: The second half of a dynamic search: every range moved or narrowed (Optuna refuses changed
#: choices of a categorical within one study, so those stay).
NARROWED_SPACE: list[Param] = [
    FloatParam(name="x", low=0.5, high=0.75, step=0.25),
    IntParam(name="depth", low=3, high=5),
    CategoricalParam(name="act", choices=["relu", "gelu", "tanh"]),
    CategoricalParam(name="flag", choices=[True, False]),
    FixedParam(name="arch", value="cnn"),
]

DIRECTIONS: tuple[Literal["minimize", "maximize"], ...] = ("minimize", "maximize", "minimize")


def job_spec(sampler: str, *, n_objectives: int = 1, seed: int | None = 0,
             options: Mapping[str, Any] | None = None) -> JobSpec:
    """A job of the `function` trainer whose objectives f1.. alternate minimize/maximize."""
    return JobSpec.model_validate({
        "name": f"contract-{sampler}", "seed": seed,
        "trainer": {"name": "function", "dataset": "sphere", "epochs": 1},
        "objectives": [{"name": f"f{k + 1}", "direction": DIRECTIONS[k]}
                       for k in range(n_objectives)],
        "algorithm": {"sampler": sampler, "options": dict(options or {})},
    })


def registry_sampler(
    name: str, *, params: Sequence[Param] = (), n_objectives: int = 1, seed: int | None = 0,
    constraints_func: Callable[[optuna.trial.FrozenTrial], Sequence[float]] | None = None,
    startup: int | None = None,
) -> optuna.samplers.BaseSampler:
    """The sampler `name` as a job of `n_objectives` objectives over `params` builds it;
    `startup` sets `n_startup_trials` where the sampler takes that option, so that a short
    test reaches its model."""
    entry = SAMPLERS[name]
    options = {"n_startup_trials": startup} if startup is not None and (
        "n_startup_trials" in entry.options) else {}
    spec = job_spec(name, n_objectives=n_objectives, seed=seed, options=options)
    constraints = constraints_func if entry.constraints else None

    def build(trial_seed: int | None) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return entry.build(AlgorithmContext(
                spec.model_copy(update={"seed": trial_seed}), list(params), constraints
            ))

    return TrialSeededSampler(build, seed=seed)


def objective_values(params: Mapping[str, ParamValue], n_objectives: int) -> list[float]:
    """Deterministic values of a candidate, so that model-based samplers see one history."""
    numbers = [float(v) if not isinstance(v, str) else float(len(v))
               for _, v in sorted(params.items())]
    total = sum(numbers)
    return [math.sin(total + k) ** 2 + 0.01 * k for k in range(n_objectives)]


def in_space(values: Mapping[str, ParamValue], params: Sequence[Param]) -> None:
    """Assert that `values` has exactly the active parameters of `params`, each a value it can
    take, of its Python type (never a numpy scalar)."""
    active: dict[str, ParamValue] = {}
    for p in params:
        if p.condition is None or p.condition.holds(active):
            assert p.name in values, f"active parameter {p.name!r} missing from {values}"
            active[p.name] = values[p.name]
    assert set(values) == set(active), f"inactive parameters sampled: {set(values) - set(active)}"
    for p in params:
        if p.name not in values:
            continue
        value = values[p.name]
        assert p.can_take(value), f"{p.name}={value!r} is outside {p}"
        if isinstance(p, IntParam):
            assert type(value) is int, (p.name, type(value))
        elif isinstance(p, FloatParam):
            assert type(value) is float, (p.name, type(value))
        elif isinstance(p, CategoricalParam):
            assert any(type(value) is type(c) and value == c for c in p.choices), (p.name, value)


def run_trials(
    study: optuna.Study, params: Sequence[Param], n_trials: int, *,
    state_of: Callable[[int], TrialState] = lambda number: TrialState.COMPLETE,
) -> list[dict[str, ParamValue]]:
    """Ask, sample with `suggest` and tell `n_trials` trials; a trial whose `state_of` is
    PRUNED reports two steps first, a FAIL one records a constraint violation and no values."""
    n_objectives = len(study.directions)
    sampled = []
    for _ in range(n_trials):
        trial = study.ask()
        values = suggest(trial, params)
        in_space(values, params)
        sampled.append(values)
        trial.set_user_attr("violation", objective_values(values, 1)[0] - 0.5)
        state = state_of(trial.number)
        if state == TrialState.COMPLETE:
            study.tell(trial, objective_values(values, n_objectives))
        elif state == TrialState.PRUNED:
            if n_objectives == 1:
                for step in (1, 2):
                    trial.report(objective_values(values, 1)[0] + 1 / step, step)
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=state)
    return sampled


def objective_counts(entry: SamplerEntry) -> list[int]:
    """The numbers of objectives to try a sampler with: one, and two where it takes several."""
    return ([1] if entry.single_objective else []) + ([2] if entry.multi_objective else [])


def space_for(entry: SamplerEntry) -> list[Param]:
    """The mixed space, or the finite one for a sampler that lists its points (a grid)."""
    return FINITE_SPACE if entry.max_trials is not None else MIXED_SPACE


class SamplerTestCase:
    """What every sampler of the registry keeps: sampled values lie in the space (conditional
    and changing spaces too), the same seed gives the same parameters, several threads may
    sample one study, and pruned and failed trials in the history are no obstacle.

    Samplers that take `n_startup_trials` get `STARTUP`, and each test runs a trial or two
    past it, so that model-based samplers propose from their model (a GP's step with several
    objectives takes seconds, hence so few). Subclasses provide the `sampler_name` fixture."""

    STARTUP = 3

    @pytest.fixture
    def sampler_name(self) -> str:
        raise NotImplementedError

    @classmethod
    def study(cls, name: str, params: Sequence[Param], *, n_objectives: int = 1,
              seed: int | None = 0, constraints: bool = False) -> optuna.Study:
        def violations(t: optuna.trial.FrozenTrial) -> list[float]:
            return [float(t.user_attrs.get("violation", 0.0))]

        sampler = registry_sampler(name, params=params, n_objectives=n_objectives, seed=seed,
                                   constraints_func=violations if constraints else None,
                                   startup=cls.STARTUP)
        return optuna.create_study(
            sampler=sampler, directions=list(DIRECTIONS[:n_objectives]),
            storage=optuna.storages.InMemoryStorage(),
        )

    def test_sampled_values_lie_in_the_space(self, sampler_name: str) -> None:
        entry = SAMPLERS[sampler_name]
        params = space_for(entry)
        for n_objectives in objective_counts(entry):
            n_trials = self.STARTUP + (2 if n_objectives == 1 else 1)
            study = self.study(sampler_name, params, n_objectives=n_objectives)
            run_trials(study, params, n_trials)
            assert [t.state for t in study.trials] == [TrialState.COMPLETE] * n_trials

    def test_a_database_study_stores_what_was_sampled(self, sampler_name: str,
                                                      tmp_path: Path) -> None:
        # On an RDB storage `suggest` writes a trial's parameters in one transaction
        # (`params_in_one_write`), the path every job takes; the stored trial must hold
        # exactly what was sampled.
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
        sampler = registry_sampler(sampler_name, params=CONDITIONAL_SPACE, startup=self.STARTUP)
        study = optuna.create_study(sampler=sampler, storage=storage)
        sampled = run_trials(study, CONDITIONAL_SPACE, self.STARTUP + 2)
        stored = optuna.load_study(study_name=study.study_name, storage=storage).trials
        assert [t.params for t in stored] == [
            {k: v for k, v in values.items() if k in t.distributions}
            for t, values in zip(stored, sampled, strict=True)
        ]
        storage.engine.dispose()

    def test_conditional_parameters_are_sampled_only_when_active(
        self, sampler_name: str
    ) -> None:
        study = self.study(sampler_name, CONDITIONAL_SPACE)
        sampled = run_trials(study, CONDITIONAL_SPACE, self.STARTUP + 9)
        # `in_space` checked each trial; here, that some trials took each branch: all 12 on one
        # of the 3 values of n_layers has a chance of 3 * 3**-12 for random draws.
        assert len({v["n_layers"] for v in sampled}) > 1

    def test_a_changed_space_is_sampled_within_its_new_ranges(self, sampler_name: str) -> None:
        study = self.study(sampler_name, FINITE_SPACE)
        run_trials(study, FINITE_SPACE, self.STARTUP + 1)
        # The space changed (a resubmitted spec on the same study): a sampler built for it
        # samples the study, whose history holds the old ranges.
        study.sampler = registry_sampler(sampler_name, params=NARROWED_SPACE, seed=1,
                                         startup=self.STARTUP)
        run_trials(study, NARROWED_SPACE, 3)

    def test_the_same_seed_gives_the_same_parameters(self, sampler_name: str) -> None:
        entry = SAMPLERS[sampler_name]
        params = space_for(entry)
        n_objectives = objective_counts(entry)[0]

        def sampled(seed: int) -> list[dict[str, ParamValue]]:
            study = self.study(sampler_name, params, n_objectives=n_objectives, seed=seed)
            return run_trials(study, params, self.STARTUP + 2)

        first = sampled(11)
        assert sampled(11) == first
        # Another seed draws otherwise: the first trials alone coincide with a chance below
        # 1e-6 in these spaces.
        assert sampled(12) != first

    def test_several_threads_sample_one_study(self, sampler_name: str) -> None:
        entry = SAMPLERS[sampler_name]
        params = space_for(entry)
        study = self.study(sampler_name, params, n_objectives=objective_counts(entry)[0])
        n_objectives = len(study.directions)
        n_trials = self.STARTUP + 5
        seen: list[dict[str, ParamValue]] = []

        def objective(trial: optuna.Trial) -> list[float]:
            values = suggest(trial, params)
            seen.append(values)
            return objective_values(values, n_objectives)

        study.optimize(objective, n_trials=n_trials, n_jobs=2)
        assert sorted(t.number for t in study.trials) == list(range(n_trials))
        assert all(t.state == TrialState.COMPLETE for t in study.trials)
        assert len(seen) == n_trials
        for values in seen:
            in_space(values, params)

    def test_pruned_and_failed_trials_in_the_history(self, sampler_name: str) -> None:
        entry = SAMPLERS[sampler_name]
        params = space_for(entry)
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        # Completed trials 0, 3, 6: the model sees two before trial 6.
        n_trials = max(self.STARTUP, 6) + 1
        for n_objectives in objective_counts(entry):
            study = self.study(sampler_name, params, n_objectives=n_objectives,
                               constraints=entry.constraints)
            run_trials(study, params, n_trials, state_of=lambda n: states[n % 3])
            assert [t.state for t in study.trials] == [states[n % 3] for n in range(n_trials)]

    def test_a_bounded_sampler_offers_each_point_once(self, sampler_name: str) -> None:
        entry = SAMPLERS[sampler_name]
        if entry.max_trials is None:
            pytest.skip(f"{sampler_name} proposes any number of trials")
        for params in (FINITE_SPACE, CONDITIONAL_SPACE):
            n = entry.max_trials(params)
            study = self.study(sampler_name, params)
            sampled = run_trials(study, params, n)
            assert len({tuple(sorted(v.items())) for v in sampled}) == n
