"""Grid search over a space's active combinations: every point once, in a seeded order.

Optuna's `GridSampler` crosses every parameter with every other, so a conditional parameter
repeats each of its values for every value of its target, even where it is inactive. This grid
enumerates only the combinations `suggest` can produce, and keeps Optuna's way of sharing the
work: which points are taken is read from the study's trials (system attribute `grid:id`), so
several workers and a restarted one never run a point twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from edgetune.spaces import Param, ParamValue, finite_values
from edgetune.storage import study_store

GRID_ID_KEY = "grid:id"
#: Grids larger than this are refused: enumerating them is slow and no job runs them out.
MAX_GRID_POINTS = 1_000_000


class InfiniteGridError(ValueError):
    """The space has a parameter with no finite list of values, or too many points."""


def grid_values(p: Param) -> list[ParamValue]:
    """The values a grid takes for `p`; raises `InfiniteGridError` for a float without step."""
    values = finite_values(p)
    if values is None:
        raise InfiniteGridError(
            f"{p.name} is a float without `step`, so a grid cannot list its values; "
            "give it a step or `choices`"
        )
    return values


def grid_points(params: Sequence[Param]) -> list[dict[str, ParamValue]]:
    """Every combination of active values of a resolved space (targets before conditions)."""
    sizes = 1
    values = {}
    for p in params:
        values[p.name] = grid_values(p)
        sizes *= len(values[p.name])
    if sizes > MAX_GRID_POINTS * 100:
        # Even before conditions cut it down, the product is far too large to enumerate.
        raise InfiniteGridError(
            f"the grid has about {sizes:.3g} points; at most {MAX_GRID_POINTS:,} are allowed"
        )
    points: list[dict[str, ParamValue]] = [{}]
    for p in params:
        grown = []
        for point in points:
            if p.condition is not None and not p.condition.holds(point):
                grown.append(point)
                continue
            grown.extend({**point, p.name: v} for v in values[p.name])
        points = grown
        if len(points) > MAX_GRID_POINTS:
            raise InfiniteGridError(
                f"the grid has more than {MAX_GRID_POINTS:,} points; narrow the space"
            )
    return points


class SpaceGridSampler(optuna.samplers.BaseSampler):
    """Visits every point of `grid_points(params)` once, unvisited points first.

    Each trial claims a point in `before_trial`, chosen at random (seeded by the trial's number)
    among those no other trial holds or used up, and stores its index as a system attribute,
    atomically across threads and processes (`study_store.claim_point`); `sample_independent`
    answers from that point. A trial that failed on its parameters keeps its point (it used
    budget); only an infrastructure failure frees it. Once every point is taken, a trial
    repeats a random point: the backend caps the job at `len(points)` trials, so this happens
    only when workers race for the last points.
    """

    def __init__(self, params: Sequence[Param], *, seed: int | None = None) -> None:
        self._points = grid_points(params)
        self._seed = seed

    def __len__(self) -> int:
        return len(self._points)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if GRID_ID_KEY in trial.system_attrs:  # a retried or enqueued trial keeps its point
            return
        rng = np.random.default_rng([self._seed or 0, trial.number])

        def choose(taken: set[int]) -> int:
            free = [i for i in range(len(self._points)) if i not in taken]
            return int(rng.choice(free)) if free else int(rng.integers(len(self._points)))

        point = study_store.claim_point(study, study_store.trial_id(trial), GRID_ID_KEY, choose)
        trial.system_attrs[GRID_ID_KEY] = point

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        point = self._points[trial.system_attrs[GRID_ID_KEY]]
        if param_name not in point:
            raise ValueError(
                f"{param_name!r} is not active at grid point {point}; the grid and the "
                "space it was built from disagree"
            )
        return param_distribution.to_external_repr(
            param_distribution.to_internal_repr(point[param_name])
        )


def grid_size(params: Sequence[Param]) -> int:
    """How many points the grid of `params` has (raises `InfiniteGridError` when unbounded)."""
    return len(grid_points(params))

