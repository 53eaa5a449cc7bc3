"""A job's trials ranked on its Pareto front: trials in, `ParetoPublic` out."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from edgetune.schemas import ObjectivePublic, ParetoPublic, ParetoTrial
from edgetune.search.constraints import total_violation
from edgetune.search.pareto import constrained_rank, crowding_distance
from edgetune.spec import METRICS, JobSpec


def trial_metrics(trial: FrozenTrial) -> dict[str, float]:
    """The metrics a trial measured, from its user attributes (numbers only)."""
    out: dict[str, float] = {}
    for key, value in trial.user_attrs.items():
        name = key.split("@", 1)[0]
        if name in METRICS and isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def rank_front(
    job_id: str,
    spec: JobSpec,
    trials: Sequence[FrozenTrial],
    *,
    objectives: Sequence[str] | None = None,
    include_dominated: bool = False,
) -> ParetoPublic:
    """Rank the completed trials on `objectives` (default: all of the job's), constraints first.

    Feasible trials are ranked by non-dominated sorting, infeasible ones after them by total
    violation; crowding distance is computed within each rank.
    """
    keys = list(objectives) if objectives else spec.metric_names
    unknown = [k for k in keys if k not in spec.metric_names]
    if unknown:
        raise ValueError(
            f"objectives {', '.join(unknown)} are not objectives of this job; "
            f"its objectives: {', '.join(spec.metric_names)}"
        )
    directions = {o.key: o.direction or METRICS[o.name] for o in spec.objectives}
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    by_key = [dict(zip(spec.metric_names, t.values, strict=True)) for t in done]
    rows = [[v[k] for k in keys] for v in by_key]
    values = np.array(rows, dtype=np.float64).reshape(len(done), len(keys))
    signs = np.array([-1.0 if directions[k] == "maximize" else 1.0 for k in keys])
    lower_better = values * signs
    metrics = [trial_metrics(t) for t in done]
    violation = np.array([total_violation(spec.constraints, m) for m in metrics])
    ranks = constrained_rank(lower_better, violation if spec.constraints else None)
    crowding = np.zeros(len(done))
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        crowding[members] = crowding_distance(lower_better[members])

    order = sorted(range(len(done)), key=lambda i: (int(ranks[i]), *lower_better[i]))
    data = [
        ParetoTrial(
            number=done[i].number,
            params=done[i].params | done[i].user_attrs.get("fixed_params", {}),
            values={k: by_key[i][k] for k in keys},
            metrics=metrics[i],
            rank=int(ranks[i]),
            crowding_distance=None if math.isinf(crowding[i]) else float(crowding[i]),
            feasible=bool(violation[i] <= 0),
            violation=float(max(0.0, violation[i])),
        )
        for i in order
        if include_dominated or ranks[i] == 0
    ]
    return ParetoPublic(
        job_id=job_id,
        objectives=[ObjectivePublic(name=k, direction=directions[k]) for k in keys],
        data=data,
        n_complete=len(done),
        front_size=int(np.sum(ranks == 0)) if len(done) else 0,
    )
