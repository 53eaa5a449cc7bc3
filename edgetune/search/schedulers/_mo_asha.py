"""mo-asha: stop unpromising trials early in a multi-objective study, which Optuna's pruners
(`Trial.report` refuses multi-objective studies) and Ray Tune's schedulers cannot do.

Asynchronous successive halving (ASHA; Li et al., "A System for Massively Parallel
Hyperparameter Tuning", MLSys 2020) with NSGA-II's selection (Deb et al., IEEE TEVC 2002) in
place of sorting one value: at each rung the top 1/eta trials by non-dominated rank, then by
crowding distance within a front, go on. Schmucker et al. (2021, arXiv:2106.12639) call this
MO-ASHA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from optuna.pruners import BasePruner
from optuna.study import StudyDirection

from edgetune.search.pareto import crowding_distance, non_dominated_rank
from edgetune.storage import study_store

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = ["MOASHAPruner", "report_values"]

# Trial system attributes, namespaced so they never collide with Optuna's own `completed_rung_*`
# or another scheduler's bookkeeping.
_VALUES_KEY_PREFIX = "mo_asha:values:"
_COMPLETED_RUNG_KEY_PREFIX = "mo_asha:completed_rung_"


def _values_key(step: int) -> str:
    return f"{_VALUES_KEY_PREFIX}{step}"


def _completed_rung_key(rung: int) -> str:
    return f"{_COMPLETED_RUNG_KEY_PREFIX}{rung}"


def report_values(study: optuna.Study, trial_id: int, step: int, values: Sequence[float]) -> None:
    """Store a trial's intermediate objective vector at `step`, for `MOASHAPruner` to judge.

    `values` has one value per objective, in the study's objective order and in the objectives'
    own directions (do not negate maximized ones). The vector goes to the trial's system
    attributes, not to Optuna's intermediate values, which hold one float; that way any worker
    process, or the same one after a restart, sees it. Reporting a step again overwrites it;
    a rung already judged keeps the vector it was judged by.

    Raises TypeError when `step` is not an int or a value is not a number, and ValueError when
    `step` is negative or `values` has the wrong length. NaN is stored as is and gets the trial
    pruned at its next rung.
    """
    if isinstance(step, bool) or not isinstance(step, int | np.integer):
        raise TypeError(f"The `step` argument is of type '{type(step)}' but supposed to be an int.")
    if step < 0:
        raise ValueError(f"The value of `step` is {step}, but must be >= 0.")
    try:
        vector = [float(v) for v in values]
    except (TypeError, ValueError) as e:
        raise TypeError(f"The `values` argument must be a sequence of floats: {e}") from e
    n_objectives = len(study.directions)
    if len(vector) != n_objectives:
        raise ValueError(
            f"The study has {n_objectives} objectives, but {len(vector)} values were reported."
        )
    study_store.set_system_attr(study, trial_id, _values_key(int(step)), vector)


def _latest_step(trial: FrozenTrial) -> int | None:
    """The largest step reported with `report_values`, or None if none was."""
    steps = [
        int(key[len(_VALUES_KEY_PREFIX) :])
        for key in trial.system_attrs
        if key.startswith(_VALUES_KEY_PREFIX) and key[len(_VALUES_KEY_PREFIX) :].isdigit()
    ]
    return max(steps) if steps else None


def _current_rung(trial: FrozenTrial) -> int:
    # O(log step) iterations, as in Optuna's SuccessiveHalvingPruner.
    rung = 0
    while _completed_rung_key(rung) in trial.system_attrs:
        rung += 1
    return rung


def _promotion_position(values: npt.NDArray[np.float64], index: int) -> int:
    """Position of row `index` when rows are ordered by non-dominated rank (ascending), then
    crowding distance within the front (descending), then row order; lower is better.

    Only the row's own front needs crowding distances: every better front comes before it
    whatever their spread, so the cost stays one ranking however many fronts there are.
    """
    ranks = non_dominated_rank(values)
    rank = ranks[index]
    ahead = int(np.count_nonzero(ranks < rank))
    front = np.flatnonzero(ranks == rank)
    if len(front) == 1:
        return ahead
    crowding = crowding_distance(values[front])
    own = crowding[int(np.searchsorted(front, index))]
    # Rows are in trial-number order: equal crowding goes to the earlier trial.
    earlier = front < index
    return ahead + int(np.count_nonzero((crowding > own) | ((crowding == own) & earlier)))


class MOASHAPruner(BasePruner):
    """Asynchronous successive halving over objective vectors (mo-asha).

    The same schedule as Optuna's `SuccessiveHalvingPruner`: rung `k` ends at step
    `min_resource * reduction_factor ** (min_early_stopping_rate + k)`. When a trial reaches the
    end of a rung, its latest vector (see `report_values`) is recorded as the one it completed
    that rung with, and it competes with every trial of the study that completed the rung
    before it, whatever their state. It goes on only if it is among the first
    `max(1, n // reduction_factor)` of the `n` competitors ordered as NSGA-II selects: by
    non-dominated rank, then by crowding distance within a front (larger first), then by trial
    number. Like ASHA it never waits for a rung to fill: the first trials at a rung go on when
    they are best so far, since an Optuna trial cannot be paused and resumed later.

    Directions come from `study.directions`; maximized objectives are negated before ranking.
    A vector holding NaN or infinity at the end of a rung prunes the trial, since it cannot be
    ranked. With one objective this is ASHA, except that tied values are promoted by trial
    number rather than all at once.

    `Trial.should_prune` refuses multi-objective studies, so call `prune` directly:
    `pruner.prune(study, study_store.frozen_trial(study, trial_id))` after `report_values`.
    All state lives in the trials' system attributes (`mo_asha:values:<step>` and
    `mo_asha:completed_rung_<k>`), so any process, or a fresh pruner after a restart, makes the
    same decisions. A call reads the study's trials at most once.

    Args:
        min_resource: Steps a trial runs before its first rung can end it (`r` in the paper).
        reduction_factor: About 1 in `reduction_factor` trials goes on at each rung (`eta`).
        min_early_stopping_rate: Rungs skipped before the first promotion decision (`s`).
        bootstrap_count: Trials that must complete a rung before any is promoted from it; the
            first `bootstrap_count` to reach it are pruned.
    """

    def __init__(
        self,
        *,
        min_resource: int = 1,
        reduction_factor: int = 3,
        min_early_stopping_rate: int = 0,
        bootstrap_count: int = 0,
    ) -> None:
        if min_resource < 1:
            raise ValueError(f"The value of `min_resource` is {min_resource}, but must be >= 1.")
        if reduction_factor < 2:
            raise ValueError(
                f"The value of `reduction_factor` is {reduction_factor}, but must be >= 2."
            )
        if min_early_stopping_rate < 0:
            raise ValueError(
                f"The value of `min_early_stopping_rate` is {min_early_stopping_rate}, "
                "but must be >= 0."
            )
        if bootstrap_count < 0:
            raise ValueError(
                f"The value of `bootstrap_count` is {bootstrap_count}, but must be >= 0."
            )
        self._min_resource = min_resource
        self._reduction_factor = reduction_factor
        self._min_early_stopping_rate = min_early_stopping_rate
        self._bootstrap_count = bootstrap_count

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """True when `trial` should stop now, judged by the vector of its latest reported step.

        Records `mo_asha:completed_rung_<k>` on the trial for each rung it reaches, whatever
        the decision, so pass the trial as just read from storage.
        """
        step = _latest_step(trial)
        if step is None:
            return False
        vector: list[float] = trial.system_attrs[_values_key(step)]
        n_objectives = len(study.directions)
        if len(vector) != n_objectives:
            raise ValueError(
                f"The study has {n_objectives} objectives, but trial {trial.number} reported "
                f"{len(vector)} values at step {step}."
            )
        # Negating maximized objectives makes every column "lower is better" for the kernels.
        signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions])

        rung = _current_rung(trial)
        trials: list[FrozenTrial] | None = None
        while True:
            rung_promotion_step = self._min_resource * (
                self._reduction_factor ** (self._min_early_stopping_rate + rung)
            )
            if step < rung_promotion_step:
                return False
            if not all(math.isfinite(v) for v in vector):
                return True

            if trials is None:
                trials = study.get_trials(deepcopy=False)

            rung_key = _completed_rung_key(rung)
            study_store.set_system_attr(study, study_store.trial_id(trial), rung_key, vector)

            # Trial-number order breaks ties. The snapshot may or may not already show this
            # trial's own record, so it is taken from `vector` instead.
            others = [
                (t.number, t.system_attrs[rung_key])
                for t in trials
                if t.number != trial.number and rung_key in t.system_attrs
            ]
            index = sum(1 for number, _ in others if number < trial.number)
            competing = [v for _, v in others]
            competing.insert(index, vector)

            # `competing` includes this trial, hence `<=`.
            if len(competing) <= self._bootstrap_count:
                return True

            n_promoted = max(1, len(competing) // self._reduction_factor)
            values = np.array(competing, dtype=np.float64) * signs
            if _promotion_position(values, index) >= n_promoted:
                return True

            rung += 1


def report_progress(study: optuna.Study, trial_id: int, step: int, values: Sequence[float]) -> bool:
    """Hand a running trial's progress at `step` to the study's pruner; True when it says stop.

    One value goes through Optuna's `Trial.report` and `should_prune`, which every Optuna
    pruner reads; several (mo-asha) through `report_values`, since Optuna keeps one float per
    step. Used by trials of the optuna backend and by ask/tell clients alike.
    """
    from optuna.trial import Trial

    if len(values) == 1:
        trial = Trial(study, trial_id)
        trial.report(float(values[0]), step=step)
        return trial.should_prune()
    report_values(study, trial_id, step, values)
    return study.pruner.prune(study, study_store.frozen_trial(study, trial_id))

