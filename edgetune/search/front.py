"""A job's completed trials ranked on its Pareto front, with hypervolume and the knee.

Reads objective values straight from Optuna's tables (`storage.trials`) and keeps the ranking
of each job cached in the process: completed trials never change, so the number of them
identifies the set, and a busy job is not re-ranked on every request.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from edgetune.schemas import (
    HypervolumePoint,
    HypervolumePublic,
    ObjectivePublic,
    ParetoPublic,
    ParetoTrial,
)
from edgetune.search.constraints import total_violation
from edgetune.search.pareto import (
    constrained_rank,
    crowding_distance,
    hypervolume,
    hypervolume_contributions,
    is_pareto_front,
    knee_point,
    reference_point,
)
from edgetune.spec import METRICS, JobSpec
from edgetune.storage import Database
from edgetune.storage.trials import (
    completed_trials,
    count_completed,
    trial_params,
    trial_user_attrs,
)

_CACHE_SIZE = 64
_EARLIEST = datetime.min.replace(tzinfo=UTC)  # completion times are aware (UTC)


def trial_metrics(attrs: dict[str, object]) -> dict[str, float]:
    """The metrics a trial measured, from its user attributes (numbers only)."""
    out: dict[str, float] = {}
    for key, value in attrs.items():
        name = key.split("@", 1)[0]
        if name in METRICS and isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


@dataclass
class RankedFront:
    """Everything about the completed trials that does not depend on the page asked for.

    The front (rank 0) is found at once; the ranks of the dominated trials, which only a
    request with `include_dominated` needs, are computed on first use by `full_ranks`.
    """

    objectives: list[ObjectivePublic]
    trial_ids: list[int]
    numbers: list[int]
    completed_at: list[datetime | None]
    values: npt.NDArray[np.float64]  # as the user reads them (accuracy up, latency down)
    lower_better: npt.NDArray[np.float64]
    violation: npt.NDArray[np.float64]
    on_front: npt.NDArray[np.bool_]  # rank 0: feasible and non-dominated (see constrained_rank)
    contributions: npt.NDArray[np.float64]  # NaN off the feasible front
    knee: int | None  # index into the arrays
    reference: npt.NDArray[np.float64]  # lower-better orientation
    hypervolume: float | None
    constrained: bool
    _ranks: npt.NDArray[np.int64] | None = None
    _crowding: npt.NDArray[np.float64] | None = None

    def full_ranks(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Every trial's rank (feasible first) and crowding distance within its rank."""
        if self._ranks is None or self._crowding is None:
            ranks = constrained_rank(self.lower_better,
                                     self.violation if self.constrained else None)
            crowding = np.zeros(len(ranks))
            for rank in np.unique(ranks):
                members = np.flatnonzero(ranks == rank)
                crowding[members] = crowding_distance(self.lower_better[members])
            self._ranks, self._crowding = ranks, crowding
        return self._ranks, self._crowding

    def front_crowding(self) -> npt.NDArray[np.float64]:
        """Crowding distance of the front's members (zeros elsewhere), without full ranks."""
        crowding = np.zeros(len(self.numbers))
        members = np.flatnonzero(self.on_front)
        crowding[members] = crowding_distance(self.lower_better[members])
        return crowding

    def reference_point(self) -> dict[str, float]:
        """The reference point in the user's orientation (a maximized objective's floor)."""
        out = {}
        for o, v in zip(self.objectives, self.reference, strict=True):
            if math.isfinite(v):
                out[o.name] = float(-v if o.direction == "maximize" else v)
        return out

    def feasible_front(self) -> list[int]:
        """Trial numbers on the feasible Pareto front."""
        members = np.flatnonzero(self.on_front & (self.violation <= 0))
        return sorted(self.numbers[i] for i in members)

    def order(self, ranks: npt.NDArray[np.int64], members: npt.NDArray[np.intp]) -> list[int]:
        """`members` by rank, then by the objectives (lower is better)."""
        return sorted(members.tolist(), key=lambda i: (int(ranks[i]), *self.lower_better[i]))


class FrontView:
    """Ranks a job's front on request; one instance per process (the API keeps one)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: OrderedDict[tuple[object, ...], RankedFront] = OrderedDict()
        self._lock = threading.Lock()

    def ranked(
        self, study_name: str, spec: JobSpec, *, objectives: Sequence[str] | None = None,
        reference: Sequence[float] | None = None,
    ) -> RankedFront:
        keys = _objective_keys(spec, objectives)
        n_complete = count_completed(self.db, study_name, one_shot_evals=_ranks_evals(spec))
        cache_key = (study_name, tuple(keys), None if reference is None else tuple(reference),
                     n_complete)
        with self._lock:
            hit = self._cache.get(cache_key)
            if hit is not None:
                self._cache.move_to_end(cache_key)
                return hit
        ranked = self._rank(study_name, spec, keys, reference)
        with self._lock:
            self._cache[cache_key] = ranked
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return ranked

    def pareto(
        self, job_id: str, study_name: str, spec: JobSpec, *,
        objectives: Sequence[str] | None = None, reference: Sequence[float] | None = None,
        include_dominated: bool = False, offset: int = 0, limit: int = 100,
    ) -> ParetoPublic:
        """The front (or every ranked trial), a page of it, with the reference point used."""
        r = self.ranked(study_name, spec, objectives=objectives, reference=reference)
        if include_dominated:
            with self._lock:  # full ranks are computed once, by whichever request comes first
                ranks, crowding = r.full_ranks()
            selected = r.order(ranks, np.arange(len(ranks)))
        else:
            ranks = np.where(r.on_front, 0, 1).astype(np.int64)
            crowding = r.front_crowding()
            selected = r.order(ranks, np.flatnonzero(r.on_front))
        page = selected[offset : offset + limit]
        page_ids = [r.trial_ids[i] for i in page]
        params = trial_params(self.db, page_ids)
        attrs = trial_user_attrs(self.db, page_ids)
        names = [o.name for o in r.objectives]
        data = [
            ParetoTrial(
                number=r.numbers[i],
                params=params.get(r.trial_ids[i], {})
                | dict(attrs.get(r.trial_ids[i], {}).get("fixed_params", {})),
                values=dict(zip(names, (float(v) for v in r.values[i]), strict=True)),
                metrics=trial_metrics(attrs.get(r.trial_ids[i], {})),
                rank=int(ranks[i]),
                crowding_distance=None if math.isinf(crowding[i]) else float(crowding[i]),
                hv_contribution=None if math.isnan(r.contributions[i])
                else float(r.contributions[i]),
                knee=r.knee == i,
                feasible=bool(r.violation[i] <= 0),
                violation=float(max(0.0, r.violation[i])),
            )
            for i in page
        ]
        return ParetoPublic(
            job_id=job_id,
            objectives=r.objectives,
            reference_point=r.reference_point(),
            hypervolume=r.hypervolume,
            data=data,
            count=len(selected),
            offset=offset,
            limit=limit,
            n_complete=len(r.numbers),
            front_size=int(np.sum(r.on_front)),
        )

    def hypervolume_history(
        self, job_id: str, study_name: str, spec: JobSpec, *,
        objectives: Sequence[str] | None = None, reference: Sequence[float] | None = None,
    ) -> HypervolumePublic:
        """Hypervolume of the feasible front after each completed trial, in completion order."""
        r = self.ranked(study_name, spec, objectives=objectives, reference=reference)
        order = sorted(range(len(r.numbers)),
                       key=lambda i: (r.completed_at[i] or _EARLIEST, r.numbers[i]))
        history: list[HypervolumePoint] = []
        front = np.empty((0, r.lower_better.shape[1]))
        volume = 0.0
        for i in order:
            point = r.lower_better[i]
            if r.violation[i] <= 0 and not _dominated_or_equal(point, front):
                keep = ~np.all(point <= front, axis=1) if len(front) else np.array([], bool)
                front = np.vstack([front[keep], point])
                volume = hypervolume(front, r.reference)
            history.append(HypervolumePoint(
                trial_number=r.numbers[i], completed_at=r.completed_at[i], hypervolume=volume,
            ))
        return HypervolumePublic(
            job_id=job_id, objectives=r.objectives, reference_point=r.reference_point(),
            data=history,
        )

    # --- internals -------------------------------------------------------------------------
    def _rank(
        self, study_name: str, spec: JobSpec, keys: list[str],
        reference: Sequence[float] | None,
    ) -> RankedFront:
        directions = {o.key: o.direction or METRICS[o.name] for o in spec.objectives}
        columns = [spec.metric_names.index(k) for k in keys]
        rows = completed_trials(self.db, study_name, one_shot_evals=_ranks_evals(spec))
        values = np.array([row.values for row in rows], dtype=np.float64).reshape(
            len(rows), len(spec.metric_names)
        )[:, columns]
        signs = np.array([-1.0 if directions[k] == "maximize" else 1.0 for k in keys])
        lower_better = values * signs
        ids = [row.trial_id for row in rows]
        if spec.constraints:
            attrs = trial_user_attrs(self.db, ids, keys=[c.key for c in spec.constraints])
            violation = np.array([total_violation(spec.constraints, attrs.get(i, {}))
                                  for i in ids])
        else:
            violation = np.zeros(len(rows))
        feasible = violation <= 0
        on_front = np.zeros(len(rows), dtype=bool)
        if feasible.any():
            on_front[np.flatnonzero(feasible)[is_pareto_front(lower_better[feasible])]] = True
        elif len(rows):
            # Nothing is feasible: rank 0 holds the least-violating trials (constrained_rank).
            on_front = constrained_rank(lower_better, violation) == 0

        if reference is not None:
            if len(reference) != len(keys):
                raise ValueError(
                    f"reference has {len(reference)} values, but there are {len(keys)} "
                    f"objectives ({', '.join(keys)})"
                )
            ref = np.asarray(reference, dtype=np.float64) * signs
        elif len(rows):
            ref = reference_point(lower_better)
        else:
            ref = np.full(len(keys), np.nan)
        contributions = np.full(len(rows), np.nan)
        knee: int | None = None
        volume: float | None = None
        front = np.flatnonzero(on_front & feasible)
        if len(front):
            contributions[front] = hypervolume_contributions(lower_better[front], ref)
            volume = float(hypervolume(lower_better[front], ref))
            if not (math.isfinite(volume) and np.all(np.isfinite(contributions[front]))):
                raise ValueError("the reference point is too far from the data: the "
                                 "hypervolume overflows a float")
            k = knee_point(lower_better[front])
            knee = None if k is None else int(front[k])
        return RankedFront(
            objectives=[ObjectivePublic(name=k, direction=directions[k]) for k in keys],
            trial_ids=ids,
            numbers=[row.number for row in rows],
            completed_at=[row.completed_at for row in rows],
            values=values,
            lower_better=lower_better,
            violation=violation,
            on_front=on_front,
            contributions=contributions,
            knee=knee,
            reference=ref,
            hypervolume=volume,
            constrained=bool(spec.constraints),
        )


def _ranks_evals(spec: JobSpec) -> bool:
    """Whether the front ranks one-shot evaluations: not in a one-shot job, whose front holds
    the trained finalists (an evaluation's accuracy is inherited from the supernet)."""
    return spec.algorithm.one_shot is None


def _objective_keys(spec: JobSpec, objectives: Sequence[str] | None) -> list[str]:
    # A plain metric name stands for the one objective measuring it (`objective_key`).
    keys = ([spec.objective_key(k, field="objectives") for k in objectives] if objectives
            else list(spec.metric_names))
    if len(set(keys)) != len(keys):
        raise ValueError("each objective may be named once")
    return keys


def _dominated_or_equal(point: npt.NDArray[np.float64], front: npt.NDArray[np.float64]) -> bool:
    return bool(len(front)) and bool(np.any(np.all(front <= point, axis=1)))
