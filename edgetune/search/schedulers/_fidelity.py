"""Successive halving whose rungs sit only at epochs where early scores rank trials as their
final scores do: the rank correlation is measured on the study's complete trials.

Successive halving assumes that a trial's score after a few epochs ranks it as its final score
would. When that fails (small networks that learn fast against large ones that start slow),
every rung throws away trials that would have ended on the front. Here the study itself says
where the assumption holds: over its complete trials, the Spearman correlation between the
value reported at epoch `r` and the final value. A rung exists at `r` only when that
correlation reaches a threshold; until enough trials are complete to measure it, nothing is
stopped and those trials feed the estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import TrialState

from edgetune.search.schedulers._mo_asha import _VALUES_KEY_PREFIX, _promotion_position

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = [
    "FidelityEstimate",
    "FidelityHalvingPruner",
    "fidelity_estimate",
    "kendall_tau",
    "reported_values",
    "spearman_rho",
]


def _ranks(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Ranks from 1, ties sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and sorted_x[end + 1] == sorted_x[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of paired samples (ties get mean ranks): the Pearson
    correlation of the ranks. NaN when fewer than two pairs or either side is constant."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"x and y must be sequences of equal length, got {a.shape}, {b.shape}")
    if len(a) < 2:
        return math.nan
    ra, rb = _ranks(a) - (len(a) + 1) / 2, _ranks(b) - (len(b) + 1) / 2
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denominator if denominator > 0 else math.nan


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of paired samples (corrected for ties). NaN when fewer than two pairs
    or either side is constant. O(n^2), for the tens to hundreds of trials of a study."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"x and y must be sequences of equal length, got {a.shape}, {b.shape}")
    if len(a) < 2:
        return math.nan
    upper = np.triu_indices(len(a), k=1)
    da = np.sign(a[:, None] - a[None, :])[upper]
    db = np.sign(b[:, None] - b[None, :])[upper]
    n_a, n_b = np.count_nonzero(da), np.count_nonzero(db)
    if n_a == 0 or n_b == 0:
        return math.nan
    return float(np.sum(da * db)) / math.sqrt(n_a * n_b)


def reported_values(trial: FrozenTrial, n_objectives: int) -> dict[int, list[float]]:
    """What `trial` reported per step to its study's pruner: Optuna's intermediate values with
    one objective (`Trial.report`), the vectors `report_values` stores with several."""
    if n_objectives == 1:
        return {int(step): [float(v)] for step, v in trial.intermediate_values.items()}
    reported: dict[int, list[float]] = {}
    for key, vector in trial.system_attrs.items():
        suffix = key[len(_VALUES_KEY_PREFIX) :]
        if key.startswith(_VALUES_KEY_PREFIX) and suffix.isdigit():
            reported[int(suffix)] = [float(v) for v in vector]
    return reported


@dataclass(frozen=True)
class FidelityEstimate:
    """How well each step's reported values rank a study's complete trials as their final
    values do.

    `spearman[r]` and `kendall[r]` hold one correlation per objective that changes with the
    step (NaN where it cannot be computed). An objective whose reported value never changes
    during any trial (FLOPs or parameters, known from the architecture) is left out: its rank
    after one epoch is its rank at the end, so it says nothing about when to stop.
    """

    #: Complete trials measured.
    n_trials: int
    #: The full budget: the last step every complete trial reported.
    final_step: int
    #: Indices of the objectives measured, in the study's order.
    objectives: tuple[int, ...]
    spearman: dict[int, tuple[float, ...]]
    kendall: dict[int, tuple[float, ...]]

    def min_spearman(self, step: int) -> float:
        """The weakest Spearman correlation at `step` over the measured objectives (NaN counts
        as the weakest); 1.0 when no objective changes with the step."""
        values = self.spearman.get(step)
        if values is None:
            return math.nan
        if any(math.isnan(v) for v in values):
            return math.nan
        return min(values, default=1.0)

    def rung_steps(self, *, threshold: float, min_step: int, reduction_factor: int
                   ) -> list[int]:
        """Steps before the final one where successive halving may stop trials: the first
        step >= `min_step` from which every measured step up to the final one reaches
        `threshold`, then that step times powers of `reduction_factor`.

        Asking every later step to pass, not just the rung's own, keeps a chance high
        correlation at one step of a few noisy trials (with several steps to choose from,
        one often passes by luck) from opening a rung: ranks that predict the end at epoch
        `r` should still predict it at `r + 1`.
        """
        steps = [r for r in sorted(self.spearman) if r < self.final_step]
        first = None
        for r in reversed(steps):
            if r < min_step or not self.min_spearman(r) >= threshold:
                break
            first = r
        if first is None:
            return []
        rungs, r = [], first
        while r < self.final_step:
            rungs.append(r)
            r *= reduction_factor
        return rungs


def fidelity_estimate(trials: Sequence[FrozenTrial], n_objectives: int, *,
                      with_kendall: bool = True) -> FidelityEstimate | None:
    """The rank correlations between each step's reported values and the final values, over
    the complete `trials` that reported at least one step; None when there are none.
    `with_kendall=False` leaves `kendall` empty: it costs O(n^2) per step, and the rungs
    read only Spearman's."""
    complete = []
    for t in trials:
        if t.state != TrialState.COMPLETE or t.values is None or len(t.values) != n_objectives:
            continue
        if not all(math.isfinite(v) for v in t.values):
            continue
        reported = reported_values(t, n_objectives)
        if reported:
            complete.append((t, reported))
    if not complete:
        return None
    final_step = min(max(reported) for _, reported in complete)
    steps = sorted(set.intersection(*(set(reported) for _, reported in complete)))
    steps = [s for s in steps if s <= final_step]
    varying = tuple(
        k for k in range(n_objectives)
        if any(len({reported[s][k] for s in reported}) > 1 for _, reported in complete)
    )
    spearman: dict[int, tuple[float, ...]] = {}
    kendall: dict[int, tuple[float, ...]] = {}
    for s in steps:
        early = [[reported[s][k] for _, reported in complete] for k in varying]
        final = [[float(t.values[k]) for t, _ in complete] for k in varying]
        spearman[s] = tuple(spearman_rho(e, f) for e, f in zip(early, final, strict=True))
        if with_kendall:
            kendall[s] = tuple(kendall_tau(e, f) for e, f in zip(early, final, strict=True))
    return FidelityEstimate(n_trials=len(complete), final_step=final_step, objectives=varying,
                            spearman=spearman, kendall=kendall)


class FidelityHalvingPruner(BasePruner):
    """Asynchronous successive halving with rungs where the study's own trials show that early
    values predict final ones (one objective: ASHA; several: mo-asha's selection).

    At every call the rungs are recomputed from the study (`fidelity_estimate`): none until
    `min_trials_for_rungs` trials are complete, so those run to the end; then the first step
    >= `min_resource` from which the Spearman correlation with the final values reaches
    `rung_correlation` at every step (the weakest objective counts, with several), and that
    step times powers of `reduction_factor`, never at the final step, since stopping a trial
    there saves nothing and loses its result.

    A trial reporting a rung step competes with every trial of the study that reported the
    same step, whatever its state: it goes on only if it is among the first
    `max(1, n // reduction_factor)` of the `n`, ordered by non-dominated rank, then crowding
    distance (larger first), then trial number, as `MOASHAPruner` orders. A NaN or infinite
    value at a rung stops the trial. Everything is read from the trials (intermediate values,
    or `mo_asha:values:<step>` with several objectives), so any process, or a fresh pruner
    after a restart, decides the same. A call reads the study's trials once.

    Args:
        rung_correlation: The Spearman correlation a step needs to hold a rung, in (0, 1].
        min_trials_for_rungs: Complete trials needed before any rung exists (>= 3).
        min_resource: The earliest step that may hold a rung.
        reduction_factor: About 1 in `reduction_factor` trials goes on at each rung.
    """

    def __init__(
        self,
        *,
        rung_correlation: float = 0.7,
        min_trials_for_rungs: int = 6,
        min_resource: int = 1,
        reduction_factor: int = 3,
    ) -> None:
        if not (0 < rung_correlation <= 1):
            raise ValueError(
                f"The value of `rung_correlation` is {rung_correlation}, but must be in (0, 1]."
            )
        if min_trials_for_rungs < 3:
            raise ValueError(
                f"The value of `min_trials_for_rungs` is {min_trials_for_rungs}, "
                "but must be >= 3."
            )
        if min_resource < 1:
            raise ValueError(f"The value of `min_resource` is {min_resource}, but must be >= 1.")
        if reduction_factor < 2:
            raise ValueError(
                f"The value of `reduction_factor` is {reduction_factor}, but must be >= 2."
            )
        self._rung_correlation = rung_correlation
        self._min_trials_for_rungs = min_trials_for_rungs
        self._min_resource = min_resource
        self._reduction_factor = reduction_factor

    def rung_steps(self, study: optuna.Study,
                   trials: Sequence[FrozenTrial] | None = None) -> list[int]:
        """The steps that hold a rung now, from the study's complete trials."""
        if trials is None:
            trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        estimate = fidelity_estimate(trials, len(study.directions), with_kendall=False)
        if estimate is None or estimate.n_trials < self._min_trials_for_rungs:
            return []
        return estimate.rung_steps(threshold=self._rung_correlation,
                                   min_step=self._min_resource,
                                   reduction_factor=self._reduction_factor)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """True when `trial` should stop now, judged by the value of its latest step."""
        n_objectives = len(study.directions)
        reported = reported_values(trial, n_objectives)
        if not reported:
            return False
        step = max(reported)
        vector = reported[step]
        if len(vector) != n_objectives:
            raise ValueError(
                f"The study has {n_objectives} objectives, but trial {trial.number} reported "
                f"{len(vector)} values at step {step}."
            )
        trials = study.get_trials(deepcopy=False)
        if step not in self.rung_steps(study, trials):
            return False
        if not all(math.isfinite(v) for v in vector):
            return True
        # The snapshot may or may not show this trial's latest report: take it from `trial`.
        # A competitor whose value cannot be ranked (NaN) was stopped here, so it ranks last:
        # it counts in `n` and is left out of the order.
        others = [(t.number, reported_values(t, n_objectives).get(step))
                  for t in trials if t.number != trial.number]
        n = 1 + sum(1 for _, v in others if v is not None)
        ranked = [(number, v) for number, v in others
                  if v is not None and all(math.isfinite(x) for x in v)]
        index = sum(1 for number, _ in ranked if number < trial.number)
        competing = [v for _, v in ranked]
        competing.insert(index, vector)
        signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0
                          for d in study.directions])
        values = np.array(competing, dtype=np.float64) * signs
        n_promoted = max(1, n // self._reduction_factor)
        return _promotion_position(values, index) >= n_promoted
