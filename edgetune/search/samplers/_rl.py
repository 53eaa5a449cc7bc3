"""The RL controller: an Optuna sampler whose policy over the search space's choices learns from
trial rewards (REINFORCE), with rewards for latency-aware NAS (MnasNet) and multi-objective search.
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

if TYPE_CHECKING:
    from optuna.study import Study

__all__ = ["MnasNetReward", "RLSampler", "Reward", "ScalarizedReward"]

# A parameter's policy is keyed by its name and its discretized choices, so that a parameter whose
# distribution changes between trials starts a fresh policy instead of reusing unrelated logits.
_PolicyKey = tuple[str, tuple[Any, ...]]

# The states whose trials are handed to the reward; a PRUNED trial counts when the reward gives it
# a value (MnasNetReward does when the trial recorded its metrics before it was stopped).
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

_DIRECTIONS = ("minimize", "maximize")


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
        if len(directions) == 0:
            raise ValueError("The value of `directions` is empty, but must name an objective.")
        for direction in directions:
            if direction not in _DIRECTIONS:
                raise ValueError(
                    f"The value of `directions` contains {direction!r}, but must contain only "
                    "'minimize' or 'maximize'."
                )
        if seed is not None and seed < 0:
            raise ValueError(f"The value of `seed` is {seed}, but must be >= 0.")
        self.directions = tuple(directions)
        # Unlike the sampler's, this seed defaults to a fixed one: every process must draw the
        # same weights for a trial, or the same trials would replay into different policies.
        self.seed = seed

    def __call__(self, trials: Sequence[FrozenTrial]) -> list[float | None]:
        n_objectives = len(self.directions)
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


class RLSampler(optuna.samplers.BaseSampler):
    """A REINFORCE controller over the choices of a search space, for (latency-aware) NAS.

    The policy is factorized: one independent categorical distribution (a vector of logits) per
    parameter. Conditional spaces, where a parameter is only suggested when another takes some
    value, make the fixed parameter order of an autoregressive controller awkward; and with the
    few hundred trials a search affords, an LSTM controller as in Zoph & Le (2017) cannot be
    trained. TuNAS (Bender et al. 2020) shows a factorized policy trained with REINFORCE is
    enough for latency-aware NAS. Numeric parameters are discretized into at most `bins` choices.

    Every parameter is sampled through `sample_independent`, one at a time as the objective
    suggests it, so that a parameter that is never suggested in a trial is never sampled and the
    trial does not update its policy.

    The sampler keeps no state of its own: to sample for a trial it replays every finished trial
    of the study in trial-number order, applying for each rewarded trial the update

        A = r - b            (b: moving average of the rewards, started at the first reward)
        logits += learning_rate * A * (onehot(choice) - softmax(logits))
                  + entropy_weight * dH/dlogits

    to each parameter the trial has. So any worker, in any process, after any restart, computes
    the same policy from the same trials. The replay is cached on the finished trials' numbers,
    so the parameters of one trial replay once. Parameter values are drawn from a generator
    seeded by (seed, trial number, parameter name), which makes a seeded search reproducible
    whichever process samples which trial.

    Args:
        reward: Turns the finished trials into rewards; see `Reward`.
        seed: Seed for sampling. None draws a fresh one, so runs differ.
        learning_rate: Step size of the policy-gradient update.
        baseline_decay: Decay of the moving-average baseline (and of the running scale of the
            advantage); in [0, 1).
        entropy_weight: Weight of the entropy bonus, which keeps the policy from collapsing on
            a choice before it has seen enough trials.
        bins: How many choices a numeric parameter with more distinct values is reduced to.
        normalize_advantage: Divide the advantage by its running root mean square, so that the
            step size does not depend on the scale of the reward.
    """

    def __init__(
        self,
        *,
        reward: Reward,
        seed: int | None = None,
        # With the advantage at about unit scale, 0.25 moves a chosen logit by ~0.2 a trial. On
        # four 4-way parameters with noisy rewards, the best choices' median probability went
        # from 1/4 to ~0.5 by trial 20 and ~0.85 by trial 60; 0.5 more often collapsed a
        # parameter onto a wrong choice early, and 0.1 had only reached ~0.55 by trial 60.
        learning_rate: float = 0.25,
        baseline_decay: float = 0.9,
        # Small against the policy-gradient step: it pulls back a policy drifting onto one
        # choice on noise alone, but barely slows one that keeps winning (0.05 and 0.1 learned
        # more slowly on the same space and collapsed no less often).
        entropy_weight: float = 0.01,
        bins: int = 8,
        # Rewards live on very different scales (accuracy gaps of 0.01, normalized rewards in
        # [0, 1]); normalizing makes one learning rate fit all of them.
        normalize_advantage: bool = True,
    ) -> None:
        if seed is not None and seed < 0:
            raise ValueError(f"The value of `seed` is {seed}, but must be >= 0.")
        if not (math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"The value of `learning_rate` is {learning_rate}, but must be > 0.")
        if not 0 <= baseline_decay < 1:
            raise ValueError(
                f"The value of `baseline_decay` is {baseline_decay}, but must be in [0, 1)."
            )
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
        self._baseline_decay = float(baseline_decay)
        self._entropy_weight = float(entropy_weight)
        self._bins = bins
        self._normalize_advantage = normalize_advantage
        # (study name, finished trial numbers) -> policy; only the latest replay is kept.
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
        return choices[int(rng.choice(len(choices), p=probabilities))]

    def reseed_rng(self) -> None:
        # Nothing to reseed: each draw seeds its own generator from the trial number.
        pass

    def probabilities(self, study: Study) -> dict[str, dict[Any, float]]:
        """The policy after replaying `study`: for each parameter seen so far, the probability of
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
            # Another thread of the same study may have replayed while this one waited.
            cached = self._cache
            if cached is not None and cached[0] == cache_key:
                return cached[1]
            policy = self._replay(trials)
            self._cache = (cache_key, policy)
            return policy

    def _replay(self, trials: Sequence[FrozenTrial]) -> _Policy:
        rewards = self._reward(trials)
        if len(rewards) != len(trials):
            raise ValueError(
                f"The reward returned {len(rewards)} values for {len(trials)} trials, but must "
                "return one per trial."
            )
        policy = _Policy()
        decay = self._baseline_decay
        baseline: float | None = None
        mean_square: float | None = None
        for trial, reward in zip(trials, rewards, strict=True):
            reward = _finite_float(reward)
            if reward is None:
                continue
            if baseline is None:
                baseline = reward
            advantage = reward - baseline
            baseline = decay * baseline + (1 - decay) * reward
            if self._normalize_advantage:
                # The running scale starts at the first non-zero advantage (the first one is
                # always zero), so the first update is of unit size rather than 1 / sqrt(1 - decay).
                if mean_square is not None:
                    mean_square = decay * mean_square + (1 - decay) * advantage**2
                elif advantage != 0:
                    mean_square = advantage**2
                advantage = advantage / math.sqrt(mean_square) if mean_square else 0.0
            for name, value in trial.params.items():
                self._update(policy, trial, name, value, advantage)
        return policy

    def _update(
        self, policy: _Policy, trial: FrozenTrial, name: str, value: Any, advantage: float
    ) -> None:
        distribution = trial.distributions[name]
        choices = _choices(distribution, self._bins)
        index = _index_of(value, distribution, choices)
        if index is None:
            return
        key = (name, choices)
        logits = policy.logits.setdefault(key, np.zeros(len(choices)))
        policy.latest[name] = key
        probabilities = _softmax(logits)
        onehot = np.zeros(len(choices))
        onehot[index] = 1.0
        log_p = np.log(np.maximum(probabilities, 1e-300))
        entropy = -float(probabilities @ log_p)
        entropy_gradient = -probabilities * (log_p + entropy)
        logits += (
            self._learning_rate * advantage * (onehot - probabilities)
            + self._entropy_weight * entropy_gradient
        )


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
