"""RLSampler (the policy-gradient controller) and its rewards."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState, create_trial

from edgetune.search.samplers._rl import (
    BEHAVIOUR_KEY,
    MnasNetReward,
    ParetoReward,
    RLSampler,
    ScalarizedReward,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

OPS = ["conv3", "conv5", "skip", "pool"]
BEST = {"op0": "skip", "op1": "skip", "op2": "skip", "depth": 2}


def count_best(trial: optuna.Trial) -> float:
    """Reward grows with the number of parameters at their best choice, plus seeded noise."""
    hits = sum(trial.suggest_categorical(f"op{i}", OPS) == "skip" for i in range(3))
    hits += trial.suggest_int("depth", 0, 3) == 2
    return hits + np.random.default_rng([99, trial.number]).normal(0.0, 0.5)


def maximize_reward() -> ScalarizedReward:
    return ScalarizedReward(directions=["maximize"])


def test_controller_learns_the_best_choices() -> None:
    # Flake probability: run with sampler seeds 0-99, this test failed for 33 (the REINFORCE
    # controller before the clipped updates: 9% of seeds 0-199), mostly because one parameter
    # of the four was still below 0.4 at trial 60: the clip lets the policy move only about 20%
    # past the policies that drew the trials, so it concentrates more slowly. The seed is fixed
    # here, so the test itself is deterministic.
    sampler = RLSampler(reward=maximize_reward(), seed=1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(count_best, n_trials=20)
    early = sampler.probabilities(study)
    study.optimize(count_best, n_trials=40)
    late = sampler.probabilities(study)

    for name, best in BEST.items():
        assert late[name][best] > 0.4, (name, late[name])
        assert late[name][best] > early[name][best], (name, early[name], late[name])
    for probabilities in late.values():
        assert math.isclose(sum(probabilities.values()), 1.0)


def test_same_seed_gives_the_same_params() -> None:
    def run(seed: int) -> list[dict[str, object]]:
        study = optuna.create_study(
            direction="maximize", sampler=RLSampler(reward=maximize_reward(), seed=seed)
        )
        study.optimize(count_best, n_trials=25)
        return [t.params for t in study.trials]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_a_fresh_sampler_rebuilds_the_policy_from_storage(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'rl.db'}"
    first = RLSampler(reward=maximize_reward(), seed=3)
    study = optuna.create_study(
        storage=storage, study_name="rl", direction="maximize", sampler=first
    )
    study.optimize(count_best, n_trials=15)

    second = RLSampler(reward=maximize_reward(), seed=3)
    resumed = optuna.load_study(storage=storage, study_name="rl", sampler=second)
    assert second.probabilities(resumed) == first.probabilities(study)

    # A search resumed by a fresh process continues exactly as one that never stopped.
    resumed.optimize(count_best, n_trials=10)
    uninterrupted = optuna.create_study(
        direction="maximize", sampler=RLSampler(reward=maximize_reward(), seed=3)
    )
    uninterrupted.optimize(count_best, n_trials=25)
    assert [t.params for t in resumed.trials] == [t.params for t in uninterrupted.trials]


def test_conditional_params_are_sampled_and_learned_only_when_active() -> None:
    def objective(trial: optuna.Trial) -> float:
        block = trial.suggest_categorical("block", ["conv", "identity"])
        if block == "identity":
            return 0.0
        kernel = trial.suggest_categorical("kernel", [3, 5, 7])
        return 1.0 + (kernel == 7)

    # Flake probability: 11 of sampler seeds 0-99 failed (the REINFORCE controller before the
    # clipped updates: 1 of 200), the clip slowing how fast "conv" passes 0.5; the seed is
    # fixed here.
    sampler = RLSampler(reward=maximize_reward(), seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=40)

    for trial in study.trials:
        assert ("kernel" in trial.params) == (trial.params["block"] == "conv")
    probabilities = sampler.probabilities(study)
    assert probabilities["block"]["conv"] > 0.5
    assert probabilities["kernel"][7] > 1 / 3


def test_params_lie_within_their_distributions() -> None:
    distributions = {
        "units": IntDistribution(8, 1024, log=True),
        "channels": IntDistribution(16, 256, step=16),
        "repeats": IntDistribution(1, 4),
        "lr": FloatDistribution(1e-5, 1e-1, log=True),
        "dropout": FloatDistribution(0.0, 0.5, step=0.1),
        "ratio": FloatDistribution(0.05, 0.95, step=0.05),
        "momentum": FloatDistribution(0.8, 0.99),
        "act": CategoricalDistribution(["relu", 2, 2.5, None, True]),
    }

    def objective(trial: optuna.Trial) -> float:
        for name, distribution in distributions.items():
            trial._suggest(name, distribution)
        return float(trial.number % 5)

    study = optuna.create_study(
        direction="maximize", sampler=RLSampler(reward=maximize_reward(), seed=0, bins=6)
    )
    study.optimize(objective, n_trials=40)

    seen: dict[str, set[object]] = {name: set() for name in distributions}
    for trial in study.trials:
        for name, distribution in distributions.items():
            value = trial.params[name]
            assert distribution._contains(distribution.to_internal_repr(value)), (name, value)
            if isinstance(distribution, IntDistribution):
                assert type(value) is int
            if isinstance(distribution, FloatDistribution):
                assert type(value) is float
            seen[name].add(value)
    assert seen["repeats"] <= {1, 2, 3, 4}
    assert seen["dropout"] <= {0.0, 0.1, 0.2, 0.3, 0.4, 0.5}
    for name in ("units", "channels", "lr", "ratio", "momentum"):
        assert 2 <= len(seen[name]) <= 6, (name, seen[name])
    assert seen["act"] <= {"relu", 2, 2.5, None, True}


def test_a_recorded_value_maps_to_its_nearest_choice() -> None:
    # bins=5 over [0, 1] gives the choices 0, 0.25, 0.5, 0.75, 1.
    x: dict[str, BaseDistribution] = {"x": FloatDistribution(0.0, 1.0)}
    sampler = RLSampler(reward=maximize_reward(), seed=0, bins=5)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for value, reward in [(0.1, 0.0), (0.74, 1.0), (0.1, 0.0), (0.77, 1.0), (0.02, 0.0)]:
        study.add_trial(create_trial(params={"x": value}, distributions=x, value=reward))

    probabilities = sampler.probabilities(study)["x"]
    assert list(probabilities) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert max(probabilities, key=probabilities.__getitem__) == 0.75
    assert probabilities[0.0] < 0.2


def test_a_changed_distribution_gets_a_fresh_policy() -> None:
    sampler = RLSampler(reward=maximize_reward(), seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    two: dict[str, BaseDistribution] = {"op": CategoricalDistribution(["a", "b"])}
    for i in range(10):
        op = "a" if i % 2 else "b"
        study.add_trial(create_trial(params={"op": op}, distributions=two, value=float(op == "a")))
    assert sampler.probabilities(study)["op"]["a"] > 0.7

    three: dict[str, BaseDistribution] = {"op": CategoricalDistribution(["a", "b", "c"])}
    study.add_trial(create_trial(params={"op": "c"}, distributions=three, value=0.5))
    probabilities = sampler.probabilities(study)["op"]
    assert list(probabilities) == ["a", "b", "c"]
    # Its single trial updated the new policy by one small step away from uniform.
    assert all(abs(p - 1 / 3) < 0.1 for p in probabilities.values())


def test_pruned_trials_count_when_the_reward_gives_them_a_value() -> None:
    reward = MnasNetReward(accuracy_key="accuracy", latency_key="latency_ms@local", target_ms=10)
    sampler = RLSampler(reward=reward, seed=0)
    study = optuna.create_study(sampler=sampler)
    op: dict[str, BaseDistribution] = {"op": CategoricalDistribution(["a", "b"])}
    for i in range(8):
        choice = "a" if i % 2 else "b"
        study.add_trial(create_trial(
            params={"op": choice}, distributions=op, state=TrialState.PRUNED,
            user_attrs={"accuracy": 0.9 if choice == "a" else 0.5, "latency_ms@local": 10.0},
        ))
    assert sampler.probabilities(study)["op"]["a"] > 0.6


def test_a_reward_of_the_wrong_length_is_refused() -> None:
    study = optuna.create_study(sampler=RLSampler(reward=lambda trials: [], seed=0))
    study.add_trial(create_trial(
        params={"op": "a"}, distributions={"op": CategoricalDistribution(["a", "b"])}, value=1.0
    ))
    with pytest.raises(ValueError, match="one per trial"):
        study.optimize(lambda t: float(t.suggest_categorical("op", ["a", "b"]) == "a"), n_trials=1)


def with_attrs(**user_attrs: object) -> FrozenTrial:
    return create_trial(value=0.0, user_attrs=user_attrs)


def mnasnet(*, hard: bool) -> MnasNetReward:
    return MnasNetReward(
        accuracy_key="accuracy", latency_key="latency_ms@local", target_ms=80.0, hard=hard
    )


def test_mnasnet_reward_soft_and_hard() -> None:
    trials = [
        with_attrs(accuracy=0.75, **{"latency_ms@local": 100.0}),
        with_attrs(accuracy=0.75, **{"latency_ms@local": 60.0}),
        with_attrs(accuracy=0.75),
        with_attrs(accuracy=float("nan"), **{"latency_ms@local": 60.0}),
        with_attrs(accuracy="high", **{"latency_ms@local": 60.0}),
    ]
    # 0.75 * 1.25 ** -0.07 = 0.75 * exp(-0.07 * 0.22314) = 0.75 * 0.98450 = 0.73838
    # 0.75 * 0.75 ** -0.07 = 0.75 * exp(0.07 * 0.28768) = 0.75 * 1.02034 = 0.76526
    soft = mnasnet(hard=False)(trials)
    assert soft[0] == pytest.approx(0.73838, abs=1e-5)
    assert soft[1] == pytest.approx(0.76526, abs=1e-5)
    assert soft[2:] == [None, None, None]
    # Hard: no penalty up to the target, accuracy * (LAT / T) ** -1 beyond it: 0.75 * 0.8.
    hard = mnasnet(hard=True)(trials)
    assert hard[:2] == [pytest.approx(0.6), 0.75]
    assert hard[2:] == [None, None, None]


def objectives(*rows: tuple[float, ...] | None) -> list[FrozenTrial]:
    trials = []
    for number, row in enumerate(rows):
        if row is None:
            trial = create_trial(state=TrialState.PRUNED)
        else:
            trial = create_trial(values=list(row))
        trial.number = number
        trials.append(trial)
    return trials


def test_scalarized_reward_single_objective_is_the_normalized_value() -> None:
    trials = objectives((1.0,), (3.0,), None, (2.0,))
    assert ScalarizedReward(directions=["maximize"])(trials) == [0.0, 1.0, None, 0.5]
    assert ScalarizedReward(directions=["minimize"])(trials) == [1.0, 0.0, None, 0.5]
    assert ScalarizedReward(directions=["minimize"])(objectives((4.0,), (4.0,))) == [1.0, 1.0]


def test_scalarized_reward_weights_are_drawn_per_trial_by_seed() -> None:
    # Trial 0 is the best in both objectives (accuracy up, latency down), trial 1 the worst.
    trials = objectives((0.9, 5.0), (0.5, 20.0), (0.7, 10.0), None)
    reward = ScalarizedReward(directions=["maximize", "minimize"], seed=11)
    rewards = reward(trials)
    assert rewards[0] == pytest.approx(1.0)
    assert rewards[1] == pytest.approx(0.0)
    assert rewards[3] is None
    weights = np.random.default_rng([11, 2]).dirichlet([1.0, 1.0])
    assert rewards[2] == pytest.approx(weights @ [0.5, 2 / 3])
    assert ScalarizedReward(directions=["maximize", "minimize"], seed=11)(trials) == rewards
    assert ScalarizedReward(directions=["maximize", "minimize"], seed=12)(trials)[2] != rewards[2]


def test_scalarized_reward_drives_a_multi_objective_study() -> None:
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        width = trial.suggest_int("width", 1, 64, log=True)
        return math.log(width), float(width)

    sampler = RLSampler(reward=ScalarizedReward(directions=["maximize", "minimize"]), seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(objective, n_trials=15)
    assert len(study.trials) == 15
    assert math.isclose(sum(sampler.probabilities(study)["width"].values()), 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, r"`epochs` is 0, but must be an integer >= 1"),
        ({"clip": 0.0}, r"`clip` is 0.0, but must be > 0"),
        ({"learning_rate": 0.0}, r"`learning_rate` is 0.0, but must be > 0"),
        ({"entropy_weight": -0.1}, r"`entropy_weight` is -0.1, but must be >= 0"),
        ({"bins": 1}, r"`bins` is 1, but must be >= 2"),
        ({"seed": -1}, r"`seed` is -1, but must be >= 0"),
    ],
)
def test_sampler_arguments_are_checked(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RLSampler(reward=maximize_reward(), **kwargs)  # type: ignore[arg-type]


def test_reward_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"`target_ms` is 0, but must be > 0"):
        MnasNetReward(accuracy_key="accuracy", latency_key="latency_ms", target_ms=0)
    with pytest.raises(ValueError, match="'fastest'"):
        ScalarizedReward(directions=["maximize", "fastest"])
    with pytest.raises(ValueError, match="`directions` is empty"):
        ScalarizedReward(directions=[])


def test_each_draw_records_the_probability_it_was_drawn_with() -> None:
    sampler = RLSampler(reward=maximize_reward(), seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(count_best, n_trials=12)

    first = study.trials[0].system_attrs
    assert first[BEHAVIOUR_KEY + "op0"] == pytest.approx(1 / 4)
    assert first[BEHAVIOUR_KEY + "depth"] == pytest.approx(1 / 4)
    # Later draws come from the policy rebuilt from the trials before them.
    last = study.trials[-1]
    for name in last.params:
        assert 0 < last.system_attrs[BEHAVIOUR_KEY + name] <= 1
    assert any(t.system_attrs[BEHAVIOUR_KEY + "op0"] != pytest.approx(1 / 4)
               for t in study.trials[2:])


def two_way_study(sampler: RLSampler, behaviour: float | None, n: int = 12) -> optuna.Study:
    """`n` hand-made trials where choice "a" always beats "b", drawn with probability
    `behaviour` (None: not recorded, so taken as uniform)."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    op: dict[str, BaseDistribution] = {"op": CategoricalDistribution(["a", "b"])}
    for i in range(n):
        choice = "a" if i % 2 else "b"
        attrs = {} if behaviour is None else {
            BEHAVIOUR_KEY + "op": behaviour if choice == "a" else 1 - behaviour}
        study.add_trial(create_trial(params={"op": choice}, distributions=op,
                                     value=float(choice == "a"), system_attrs=attrs))
    return study


def test_the_clip_keeps_the_policy_near_the_policy_that_drew_the_trials() -> None:
    # Drawn uniformly, a trial stops pushing once its choice's probability has moved 20% from
    # 1/2: with small steps the policy settles at 0.6 however many steps it takes (a large step
    # can overshoot the clip by up to one step, as in PPO).
    for epochs in (20, 200):
        sampler = RLSampler(reward=maximize_reward(), seed=0, epochs=epochs, learning_rate=0.1)
        p = sampler.probabilities(two_way_study(sampler, None))["op"]["a"]
        assert 0.59 < p < 0.62, (epochs, p)
    # A wider clip lets the same trials move it further.
    wide = RLSampler(reward=maximize_reward(), seed=0, learning_rate=0.1, clip=1.0)
    assert wide.probabilities(two_way_study(wide, None))["op"]["a"] > 0.7
    # Trials drawn by a policy that already gave "a" 0.75 move it on from there, until the
    # losing "b" trials reach 0.8 of the 0.25 they were drawn with.
    sampler = RLSampler(reward=maximize_reward(), seed=0, learning_rate=0.1)
    p = sampler.probabilities(two_way_study(sampler, 0.75))["op"]["a"]
    assert 0.79 < p < 0.84


def test_the_policy_is_rebuilt_from_the_trials_alone() -> None:
    # Two samplers, one of which has seen the study grow, agree on the same trials.
    first = RLSampler(reward=maximize_reward(), seed=4)
    study = optuna.create_study(direction="maximize", sampler=first)
    study.optimize(count_best, n_trials=20)
    second = RLSampler(reward=maximize_reward(), seed=4)
    assert second.probabilities(study) == first.probabilities(study)


def test_pareto_reward_ranks_and_shares_the_hypervolume() -> None:
    # Accuracy up, FLOPs down. Trials 0, 1 and 3 are the front; 2 is dominated by 1 (second
    # front); 4 by 2 as well (third front); 5 was pruned.
    trials = objectives((0.95, 400.0), (0.90, 100.0), (0.85, 200.0), (0.80, 50.0),
                        (0.80, 300.0), None)
    rewards = ParetoReward(directions=["maximize", "minimize"])(trials)
    assert rewards[2] == -1.0
    assert rewards[4] == -2.0
    assert rewards[5] is None
    front = [rewards[0], rewards[1], rewards[3]]
    assert max(front) == 1.0  # type: ignore[type-var]
    assert all(r is not None and 0 < r <= 1 for r in front)
    # Normalized, lower is better (accuracy 0.95 -> 0, 0.80 -> 1; FLOPs 50 -> 0, 400 -> 1),
    # reference 1.1: trial 0 is (0, 1), 1 is (1/3, 1/7), 3 is (1, 0) and the dominated 2 is
    # (2/3, 3/7). Trial 0 alone covers [0, 1/3] x [1, 1.1]; trial 1 [1/3, 1] x [1/7, 1] less
    # the part trial 2 still covers, [2/3, 1] x [3/7, 1]; trial 3 [1, 1.1] x [0, 1/7].
    own = {0: (1 / 3) * 0.1, 1: (2 / 3) * (6 / 7) - (1 / 3) * (4 / 7), 3: 0.1 / 7}
    assert rewards[0] == pytest.approx(own[0] / own[1])
    assert rewards[3] == pytest.approx(own[3] / own[1])
    # One objective: the rank of the value.
    single = ParetoReward(directions=["minimize"])
    assert single(objectives((3.0,), (1.0,), (2.0,))) == [-2.0, 1.0, -1.0]
    # Copies of a front point cover for each other: they own no hypervolume.
    assert single(objectives((3.0,), (1.0,), (2.0,), (1.0,))) == [-2.0, 0.0, -1.0, 0.0]


def test_pareto_reward_drives_a_multi_objective_study_towards_the_front() -> None:
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        # "tiny" is as accurate as "big" at a tenth of the cost; "slow" is dominated by both.
        op = trial.suggest_categorical("op", ["tiny", "big", "slow"])
        accuracy = {"tiny": 0.9, "big": 0.92, "slow": 0.7}[op]
        cost = {"tiny": 1.0, "big": 10.0, "slow": 20.0}[op]
        return accuracy + np.random.default_rng([5, trial.number]).normal(0, 0.005), cost

    sampler = RLSampler(reward=ParetoReward(directions=["maximize", "minimize"]), seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(objective, n_trials=30)
    probabilities = sampler.probabilities(study)["op"]
    assert probabilities["slow"] < 0.2
    assert probabilities["tiny"] > probabilities["slow"]


@pytest.mark.parametrize(("options", "kind"), [
    ({}, ParetoReward),
    ({"reward": "pareto"}, ParetoReward),
    ({"reward": "scalarized"}, ScalarizedReward),
])
def test_a_job_without_a_latency_target_gets_the_pareto_reward_by_default(
    options: dict[str, str], kind: type,
) -> None:
    from edgetune.search.registry import AlgorithmContext, rl_reward
    from edgetune.testing.samplers import job_spec

    spec = job_spec("rl", n_objectives=2, options=options)
    reward = rl_reward(AlgorithmContext(spec, []))
    assert type(reward) is kind
    assert isinstance(reward, ParetoReward | ScalarizedReward)
    assert reward.directions == ("minimize", "maximize")
