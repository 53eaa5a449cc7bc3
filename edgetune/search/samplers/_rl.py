"""The RL controller: an Optuna sampler whose policy over the search space's choices learns from
trial rewards (clipped policy-gradient updates, as in PPO), with rewards for latency-aware NAS
(MnasNet) and multi-objective search (Pareto rank and hypervolume contribution).
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalChoiceType,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from edgetune.search.pareto import hypervolume_contributions, non_dominated_rank
from edgetune.storage import study_store

if TYPE_CHECKING:
    from optuna.study import Study

__all__ = ["MnasNetReward", "ParetoReward", "RLSampler", "Reward", "ScalarizedReward"]

# A parameter's policy is keyed by its name and its discretized choices, so that a parameter whose
# distribution changes between trials starts a fresh policy instead of reusing unrelated logits.
_PolicyKey = tuple[str, tuple[Any, ...]]

# The states whose trials are handed to the reward; a PRUNED trial counts when the reward gives it
# a value (MnasNetReward does when the trial recorded its metrics before it was stopped).
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

_DIRECTIONS = ("minimize", "maximize")

#: Trial system attribute prefix under which the sampler records, for each parameter it drew,
#: the probability its policy gave the drawn choice (the behaviour policy of PPO's ratio).
BEHAVIOUR_KEY = "rl:p:"


class Reward(Protocol):
    """Turns finished trials into the rewards the controller learns from.

    Called with every finished trial of the study (COMPLETE and PRUNED) in trial-number order; it
    returns one reward per trial, higher is better, or None where the trial has no reward (it is
    then skipped). It must be a pure function of the trials it is given: any process replaying
    the same trials must get the same rewards, because the controller keeps no other state.
    """

    def __call__(self, trials: Sequence[FrozenTrial]) -> list[float | None]: ...


class MnasNetReward:
    """MnasNet's reward ACC * (LAT / T) ** w (Tan et al. 2019), from a trial's user attributes.

    The soft form (`hard=False`, w = `weight`, -0.07 in the paper) trades about 5% of latency for
    each 0.35% of accuracy on either side of the target T. The hard form is MnasNet's hard
    constraint: w = 0 up to the target and w = -1 beyond it, so that a slower model is penalized
    in proportion to how far it overshoots.
    """

    def __init__(
        self,
        *,
        accuracy_key: str,
        latency_key: str,
        target_ms: float,
        weight: float = -0.07,
        hard: bool = False,
    ) -> None:
        if not (math.isfinite(target_ms) and target_ms > 0):
            raise ValueError(f"The value of `target_ms` is {target_ms}, but must be > 0.")
        if not math.isfinite(weight):
            raise ValueError(f"The value of `weight` is {weight}, but must be finite.")
        self.accuracy_key = accuracy_key
        self.latency_key = latency_key
        self.target_ms = float(target_ms)
        self.weight = float(weight)
        self.hard = hard

    def __call__(self, trials: Sequence[FrozenTrial]) -> list[float | None]:
        return [self._reward(trial) for trial in trials]

    def _reward(self, trial: FrozenTrial) -> float | None:
        accuracy = _finite_float(trial.user_attrs.get(self.accuracy_key))
        latency = _finite_float(trial.user_attrs.get(self.latency_key))
        if accuracy is None or latency is None or latency <= 0:
            return None
        ratio = latency / self.target_ms
        if not self.hard:
            return accuracy * ratio**self.weight
        return accuracy if ratio <= 1.0 else accuracy / ratio


class ScalarizedReward:
    """A multi-objective reward: the trial's objectives, normalized, under random weights.

    Each objective is min-max normalized over the trials given, so that 1 is the best value seen
    and 0 the worst (an objective that never varies gives 1). The normalized objectives are
    summed under weights drawn for each trial from a flat Dirichlet, seeded by the trial number,
    so that over many trials the controller is rewarded for every trade-off along the front
    rather than for one fixed one, and a replay draws the same weights again.

    Only COMPLETE trials are rewarded: the value Optuna records for a PRUNED trial is its last
    intermediate value, taken part-way through training, which is not comparable to the others.
    """

    def __init__(self, *, directions: Sequence[str], seed: int | None = None) -> None:
        directions = _check_directions(directions)
        if seed is not None and seed < 0:
            raise ValueError(f"The value of `seed` is {seed}, but must be >= 0.")
        self.directions = directions
        # Unlike the sampler's, this seed defaults to a fixed one: every process must draw the
        # same weights for a trial, or the same trials would replay into different policies.
        self.seed = seed

    def __call__(self, trials: Sequence[FrozenTrial]) -> list[float | None]:
        n_objectives = len(self.directions)
        rewarded, rows = _complete_values(trials, n_objectives)
        rewards: list[float | None] = [None] * len(trials)
        if not rows:
            return rewards
        # Flip minimized objectives so that higher is better in every column.
        signs = np.array([1.0 if d == "maximize" else -1.0 for d in self.directions])
        values_array = np.array(rows, dtype=np.float64) * signs
        low = values_array.min(axis=0)
        span = values_array.max(axis=0) - low
        safe_span = np.where(span > 0, span, 1.0)
        normalized = np.where(span > 0, (values_array - low) / safe_span, 1.0)
        for row, i in zip(normalized, rewarded, strict=True):
            if n_objectives == 1:
                rewards[i] = float(row[0])
            else:
                rng = np.random.default_rng([self.seed or 0, trials[i].number])
                weights = rng.dirichlet(np.ones(n_objectives))
                rewards[i] = float(weights @ row)
        return rewards


class ParetoReward:
    """A multi-objective reward that follows the Pareto front rather than a weighting.

    A COMPLETE trial on the front of the trials given earns its share of the front's
    hypervolume that no other trial covers (its exclusive contribution, divided by the largest
    one), in [0, 1]; a dominated trial earns minus its non-dominated rank (-1 for the second
    front, -2 for the third, ...). Objectives are min-max normalized over the trials given, with
    the hypervolume's reference 10% past the worst value of each. So the controller is pulled
    towards the trade-offs that add most hypervolume, such as the small networks at the front's
    cheap end whose accuracy is nearly the best, and away from what the front already dominates;
    and with one objective the reward is the rank of the trial's value. Copies of one front
    point earn 0, as removing one of them takes no hypervolume away.

    Only COMPLETE trials are rewarded, as in `ScalarizedReward`.
    """

    def __init__(self, *, directions: Sequence[str]) -> None:
        self.directions = _check_directions(directions)

    def __call__(self, trials: Sequence[FrozenTrial]) -> list[float | None]:
        rewarded, rows = _complete_values(trials, len(self.directions))
        rewards: list[float | None] = [None] * len(trials)
        if not rows:
            return rewards
        # Flip maximized objectives so that lower is better in every column, then scale each
        # to [0, 1] (0 the best seen) with the reference at 1.1.
        signs = np.array([-1.0 if d == "maximize" else 1.0 for d in self.directions])
        values = np.array(rows, dtype=np.float64) * signs
        low = values.min(axis=0)
        span = values.max(axis=0) - low
        normalized = (values - low) / np.where(span > 0, span, 1.0)
        ranks = non_dominated_rank(normalized)
        contributions = hypervolume_contributions(normalized, np.full(len(signs), 1.1))
        best = float(contributions.max())
        for i, rank, contribution in zip(rewarded, ranks.tolist(), contributions, strict=True):
            if rank > 0:
                rewards[i] = -float(rank)
            else:
                rewards[i] = float(contribution) / best if best > 0 else 0.0
        return rewards


def _check_directions(directions: Sequence[str]) -> tuple[str, ...]:
    if len(directions) == 0:
        raise ValueError("The value of `directions` is empty, but must name an objective.")
    for direction in directions:
        if direction not in _DIRECTIONS:
            raise ValueError(
                f"The value of `directions` contains {direction!r}, but must contain only "
                "'minimize' or 'maximize'."
            )
    return tuple(directions)


def _complete_values(
    trials: Sequence[FrozenTrial], n_objectives: int
) -> tuple[list[int], list[list[float]]]:
    """The positions of the COMPLETE trials with finite values, and those values."""
    rewarded: list[int] = []
    rows: list[list[float]] = []
    for i, trial in enumerate(trials):
        values = trial.values
        if trial.state != TrialState.COMPLETE or values is None:
            continue
        if len(values) != n_objectives:
            raise ValueError(
                f"Trial {trial.number} has {len(values)} values, but the reward was built "
                f"for {n_objectives} directions."
            )
        if not all(math.isfinite(v) for v in values):
            continue
        rewarded.append(i)
        rows.append(list(values))
    return rewarded, rows


# The controller's defaults. On DTLZ2 (12 variables, ParetoReward, mean of 3 seeds, HV@100 with
# the benchmark's reference): learning rate 1 reached 54.38, 0.25 54.00 (the steps overshoot the
# clip a little, which widens the trust region); 40 epochs 54.36, no better than 20; REINFORCE
# as before (one pass, moving-average baseline) 53.54 with its scalarized reward.
_LEARNING_RATE = 1.0
_EPOCHS = 20
_CLIP = 0.2
# Small against the policy-gradient step: it pulls back a policy drifting onto one choice on
# noise alone, but barely slows one that keeps winning.
_ENTROPY_WEIGHT = 0.01


class RLSampler(optuna.samplers.BaseSampler):
    """A policy-gradient controller over the choices of a search space, for (latency-aware) NAS.

    The policy is factorized: one independent categorical distribution (a vector of logits) per
    parameter. Conditional spaces, where a parameter is only suggested when another takes some
    value, make the fixed parameter order of an autoregressive controller awkward; and with the
    few hundred trials a search affords, an LSTM controller as in Zoph & Le (2017) cannot be
    trained. TuNAS (Bender et al. 2020) shows a factorized policy trained with REINFORCE is
    enough for latency-aware NAS. Numeric parameters are discretized into at most `bins` choices.

    Every parameter is sampled through `sample_independent`, one at a time as the objective
    suggests it, so that a parameter that is never suggested in a trial is never sampled and the
    trial does not update its policy. When it draws a choice, the sampler records the
    probability its policy gave that choice in the trial's system attributes
    (`rl:p:<parameter>`): the behaviour policy of the update below.

    The sampler keeps no state of its own: to sample for a trial it rebuilds the policy from
    every finished trial of the study. The rewards of the rewarded trials are standardized over
    them into advantages A (reward minus their mean, over their standard deviation), and each
    parameter's logits, starting from zero (uniform), take `epochs` full-batch steps of PPO's
    clipped surrogate (Schulman et al. 2017) over the trials that have the parameter:

        ratio = pi(choice) / pi_behaviour(choice)
        logits += learning_rate * mean(A * ratio * (onehot(choice) - pi)  where not clipped)
                  + entropy_weight * dH/dlogits

    where a trial stops pushing once its ratio leaves [1 - clip, 1 + clip] in the direction of
    its advantage. Replaying every trial several times makes the few trials of a search count
    more than one REINFORCE step each would, and the clip keeps the policy within a step of the
    policies that drew the trials, so it does not collapse on what a handful of noisy rewards
    favour. A trial without a recorded probability (added to the study by hand, or drawn by
    another sampler) is taken as drawn uniformly. So any worker, in any process, after any
    restart, computes the same policy from the same trials. The rebuild is cached on the
    finished trials' numbers. Parameter values are drawn from a generator seeded by (seed,
    trial number, parameter name), which makes a seeded search reproducible whichever process
    samples which trial.

    Args:
        reward: Turns the finished trials into rewards; see `Reward`.
        seed: Seed for sampling. None draws a fresh one, so runs differ.
        learning_rate: Step size of each policy-gradient step.
        epochs: How many full-batch steps the policy takes over the trials.
        clip: PPO's clip range: how far (as a ratio) a trial may move the probability of its
            choice away from the probability it was drawn with; > 0.
        entropy_weight: Weight of the entropy bonus, which keeps the policy from collapsing on
            a choice before it has seen enough trials.
        bins: How many choices a numeric parameter with more distinct values is reduced to.
        normalize_advantage: Divide the advantages by their standard deviation, so that the
            step size does not depend on the scale of the reward.
    """

    def __init__(
        self,
        *,
        reward: Reward,
        seed: int | None = None,
        learning_rate: float = _LEARNING_RATE,
        epochs: int = _EPOCHS,
        clip: float = _CLIP,
        entropy_weight: float = _ENTROPY_WEIGHT,
        bins: int = 8,
        # Rewards live on very different scales (accuracy gaps of 0.01, normalized rewards in
        # [0, 1], Pareto ranks); normalizing makes one learning rate fit all of them.
        normalize_advantage: bool = True,
    ) -> None:
        if seed is not None and seed < 0:
            raise ValueError(f"The value of `seed` is {seed}, but must be >= 0.")
        if not (math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"The value of `learning_rate` is {learning_rate}, but must be > 0.")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"The value of `epochs` is {epochs}, but must be an integer >= 1.")
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"The value of `clip` is {clip}, but must be > 0.")
        if not (math.isfinite(entropy_weight) and entropy_weight >= 0):
            raise ValueError(
                f"The value of `entropy_weight` is {entropy_weight}, but must be >= 0."
            )
        if bins < 2:
            raise ValueError(f"The value of `bins` is {bins}, but must be >= 2.")
        self._reward = reward
        # One seed for the sampler's lifetime, even when drawn: the parameters of different trials
        # differ through the trial number, so copies in parallel workers never repeat each other.
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self._seed = seed
        self._learning_rate = float(learning_rate)
        self._epochs = epochs
        self._clip = float(clip)
        self._entropy_weight = float(entropy_weight)
        self._bins = bins
        self._normalize_advantage = normalize_advantage
        # (study name, finished trial numbers) -> policy; only the latest rebuild is kept.
        self._cache: tuple[tuple[str, tuple[int, ...]], _Policy] | None = None
        self._lock = threading.Lock()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        choices = _choices(param_distribution, self._bins)
        policy = self._policy(study)
        logits = policy.logits.get((param_name, choices))
        if logits is None:
            probabilities = np.full(len(choices), 1.0 / len(choices))
        else:
            probabilities = _softmax(logits)
        rng = np.random.default_rng([self._seed, trial.number, zlib.crc32(param_name.encode())])
        index = int(rng.choice(len(choices), p=probabilities))
        study_store.set_system_attr(study, study_store.trial_id(trial),
                                    BEHAVIOUR_KEY + param_name, float(probabilities[index]))
        return choices[index]

    def reseed_rng(self) -> None:
        # Nothing to reseed: each draw seeds its own generator from the trial number.
        pass

    def probabilities(self, study: Study) -> dict[str, dict[Any, float]]:
        """The policy rebuilt from `study`: for each parameter seen so far, the probability of
        each of its choices (for the distribution the parameter had in its latest trial)."""
        policy = self._policy(study)
        return {
            name: dict(zip(key[1], _softmax(policy.logits[key]).tolist(), strict=True))
            for name, key in policy.latest.items()
        }

    def _policy(self, study: Study) -> _Policy:
        trials = sorted(
            study.get_trials(deepcopy=False, states=_FINISHED), key=lambda t: t.number
        )
        cache_key = (study.study_name, tuple(t.number for t in trials))
        cached = self._cache
        if cached is not None and cached[0] == cache_key:
            return cached[1]
        with self._lock:
            # Another thread of the same study may have rebuilt while this one waited.
            cached = self._cache
            if cached is not None and cached[0] == cache_key:
                return cached[1]
            policy = self._rebuild(trials)
            self._cache = (cache_key, policy)
            return policy

    def _rebuild(self, trials: Sequence[FrozenTrial]) -> _Policy:
        rewards = self._reward(trials)
        if len(rewards) != len(trials):
            raise ValueError(
                f"The reward returned {len(rewards)} values for {len(trials)} trials, but must "
                "return one per trial."
            )
        rewarded = [(t, r) for t, r in zip(trials, map(_finite_float, rewards), strict=True)
                    if r is not None]
        policy = _Policy()
        if not rewarded:
            return policy
        values = np.array([r for _, r in rewarded])
        advantages = values - values.mean()
        if self._normalize_advantage:
            std = float(advantages.std())
            advantages = advantages / std if std > 0 else np.zeros_like(advantages)
        # Each parameter's batch: the trials that have it, under the distribution it had.
        batches: dict[_PolicyKey, tuple[list[int], list[float], list[float]]] = {}
        for (trial, _), advantage in zip(rewarded, advantages.tolist(), strict=True):
            for name, value in trial.params.items():
                distribution = trial.distributions[name]
                choices = _choices(distribution, self._bins)
                index = _index_of(value, distribution, choices)
                if index is None:
                    continue
                key = (name, choices)
                policy.latest[name] = key
                behaviour = _finite_float(trial.system_attrs.get(BEHAVIOUR_KEY + name))
                if behaviour is None or not 0 < behaviour <= 1:
                    behaviour = 1.0 / len(choices)
                indices, advs, behaviours = batches.setdefault(key, ([], [], []))
                indices.append(index)
                advs.append(advantage)
                behaviours.append(behaviour)
        for key, (indices, advs, behaviours) in batches.items():
            policy.logits[key] = self._fit(
                len(key[1]), np.array(indices), np.array(advs), np.array(behaviours)
            )
        return policy

    def _fit(
        self,
        n_choices: int,
        indices: npt.NDArray[np.int64],
        advantages: npt.NDArray[np.float64],
        behaviours: npt.NDArray[np.float64],
    ) -> npt.NDArray[np.float64]:
        """One parameter's logits after `epochs` clipped full-batch steps from uniform."""
        logits = np.zeros(n_choices)
        onehots = np.eye(n_choices)[indices]
        for _ in range(self._epochs):
            probabilities = _softmax(logits)
            ratio = probabilities[indices] / behaviours
            # PPO's clipped objective has zero gradient for a sample whose ratio has already
            # moved past the clip in the direction its advantage pushes.
            active = np.where(advantages >= 0, ratio < 1 + self._clip, ratio > 1 - self._clip)
            weights = np.where(active, advantages * ratio, 0.0)
            gradient = weights @ (onehots - probabilities) / len(indices)
            log_p = np.log(np.maximum(probabilities, 1e-300))
            entropy = -float(probabilities @ log_p)
            entropy_gradient = -probabilities * (log_p + entropy)
            logits = logits + (
                self._learning_rate * gradient + self._entropy_weight * entropy_gradient
            )
        return logits


class _Policy:
    """The logits of each parameter's choices, and the choices each parameter had last."""

    def __init__(self) -> None:
        self.logits: dict[_PolicyKey, npt.NDArray[np.float64]] = {}
        self.latest: dict[str, _PolicyKey] = {}


def _softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = np.exp(logits - logits.max())
    result: npt.NDArray[np.float64] = shifted / shifted.sum()
    return result


def _finite_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    result = float(value)
    return result if math.isfinite(result) else None


def _choices(distribution: BaseDistribution, bins: int) -> tuple[Any, ...]:
    """The choices the policy picks among for `distribution`, each a valid value of it."""
    if isinstance(distribution, CategoricalDistribution):
        return tuple(distribution.choices)
    if isinstance(distribution, IntDistribution):
        low, high, step = distribution.low, distribution.high, distribution.step
        if (high - low) // step + 1 <= bins:
            return tuple(range(low, high + 1, step))
        points = _spread(low, high, bins, distribution.log)
        snapped = low + np.round((points - low) / step).astype(np.int64) * step
        return tuple(sorted({int(v) for v in np.clip(snapped, low, high)}))
    if isinstance(distribution, FloatDistribution):
        flow, fhigh, fstep = distribution.low, distribution.high, distribution.step
        if fstep is not None and round((fhigh - flow) / fstep) + 1 <= bins:
            grid = flow + np.arange(round((fhigh - flow) / fstep) + 1) * fstep
            return tuple(_tidy(v, flow, fhigh) for v in grid)
        points = _spread(flow, fhigh, bins, distribution.log)
        if fstep is not None:
            points = flow + np.round((points - flow) / fstep) * fstep
        return tuple(sorted({_tidy(v, flow, fhigh) for v in points}))
    raise ValueError(
        f"RLSampler cannot sample {type(distribution).__name__}; it supports categorical, int "
        "and float distributions."
    )


def _tidy(value: float, low: float, high: float) -> float:
    """`value` within [low, high], rounded to 15 significant digits so that a grid point shows as
    0.3 rather than 0.30000000000000004; far inside the tolerance Optuna checks steps with."""
    return min(max(float(f"{value:.15g}"), low), high)


def _spread(low: float, high: float, bins: int, log: bool) -> npt.NDArray[np.float64]:
    if log:
        return np.geomspace(low, high, bins)
    return np.linspace(low, high, bins)


def _index_of(value: Any, distribution: BaseDistribution, choices: tuple[Any, ...]) -> int | None:
    """The choice a recorded value maps back to: the equal one for a categorical (None if no
    choice is equal), the nearest one for a number (in log scale for a log distribution)."""
    if isinstance(distribution, CategoricalDistribution):
        for i, choice in enumerate(choices):
            if _same_choice(choice, value):
                return i
        return None
    number = _finite_float(value)
    if number is None:
        return None
    points = np.asarray(choices, dtype=np.float64)
    log = isinstance(distribution, IntDistribution | FloatDistribution) and distribution.log
    if log and number > 0:
        distances = np.abs(np.log(points) - math.log(number))
    else:
        distances = np.abs(points - number)
    return int(np.argmin(distances))


def _same_choice(choice: CategoricalChoiceType, value: Any) -> bool:
    # Types must agree too: 1, 1.0 and True are equal in Python but distinct choices.
    if type(choice) is not type(value):
        return False
    if isinstance(choice, float) and math.isnan(choice):
        return isinstance(value, float) and math.isnan(value)
    return bool(choice == value)
