"""Pareto kernels on "lower is better" objective arrays: front ranks, crowding, constraints.

Pure numpy on arrays of shape (n_points, n_objectives); nothing here knows about trials.
"""

from __future__ import annotations

import bisect

import numpy as np
import numpy.typing as npt

__all__ = [
    "constrained_rank",
    "crowding_distance",
    "is_pareto_front",
    "non_dominated_rank",
    "validate_values",
]

# Upper bound on the pairs compared in one block (dominator rows x target rows). About 4 MiB per
# boolean temporary keeps memory flat however many points come in, while blocks stay large
# enough that numpy, not the Python loop over blocks, dominates the run time.
_BLOCK_PAIRS = 1 << 22


def validate_values(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Return `values` as a new 2-D float64 array, or raise ValueError saying what is wrong.

    Rows are points and columns objectives; zero rows are allowed, zero objectives are not.
    """
    try:
        array = np.array(values, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"values must be numeric: {e}") from e
    if array.ndim != 2:
        raise ValueError(
            "values must be a 2-D array of shape (n_points, n_objectives), "
            f"but has shape {array.shape}"
        )
    if array.shape[1] == 0:
        raise ValueError(
            "values must be a 2-D array of shape (n_points, n_objectives) "
            "with at least one objective, but has shape "
            f"{array.shape}"
        )
    bad_rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad_rows.size:
        raise ValueError(f"values contain NaN or infinity at row {int(bad_rows[0])}")
    return array


def _domination_counts(
    dominators: npt.NDArray[np.float64], targets: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    """For each target row, how many `dominators` rows dominate it."""
    counts = np.zeros(len(targets), dtype=np.int64)
    if len(dominators) == 0 or len(targets) == 0:
        return counts
    chunk = min(len(dominators), max(1, _BLOCK_PAIRS // len(targets)))
    # One 2-D comparison per objective into buffers allocated once, rather than a 3-D broadcast:
    # temporaries stay at rows x targets instead of rows x targets x objectives.
    target_columns = np.ascontiguousarray(targets.T)
    dominator_columns = np.ascontiguousarray(dominators.T)
    all_le = np.empty((chunk, len(targets)), dtype=np.bool_)
    all_eq = np.empty_like(all_le)
    scratch = np.empty_like(all_le)
    for start in range(0, len(dominators), chunk):
        rows = min(chunk, len(dominators) - start)
        le, eq, tmp = all_le[:rows], all_eq[:rows], scratch[:rows]
        le.fill(True)
        eq.fill(True)
        for a, b in zip(dominator_columns[:, start : start + rows], target_columns, strict=True):
            np.less_equal(a[:, np.newaxis], b[np.newaxis, :], out=tmp)
            le &= tmp
            np.equal(a[:, np.newaxis], b[np.newaxis, :], out=tmp)
            eq &= tmp
        # Dominates: <= everywhere and not equal everywhere (hence < somewhere).
        np.logical_not(eq, out=eq)
        le &= eq
        counts += np.count_nonzero(le, axis=0)
    return counts


def _rank_by_peeling(values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Any number of objectives: domination counts, then peel one front at a time."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # In lexicographic order a point can only be dominated by points before it, which halves
    # the pairs to compare. The order is exact; a sort by sum could misplace near-ties.
    order = np.lexsort(values.T[::-1])
    ordered = values[order]
    counts = np.zeros(n, dtype=np.int64)
    chunk = max(1, _BLOCK_PAIRS // n)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        counts[start:] += _domination_counts(ordered[start:stop], ordered[start:])

    ordered_ranks = np.full(n, -1, dtype=np.int64)
    remaining = np.arange(n)
    rank = 0
    while remaining.size:
        in_front = counts[remaining] == 0
        front = remaining[in_front]
        ordered_ranks[front] = rank
        remaining = remaining[~in_front]
        # Each point serves as a dominator once (when its front is removed), so the whole peel
        # costs about as much as the first count, not once per front.
        targets = remaining[np.searchsorted(remaining, front[0]) :]
        counts[targets] -= _domination_counts(ordered[front], ordered[targets])
        rank += 1
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = ordered_ranks
    return ranks


def _rank_two_objectives(values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Two objectives in O(n log n): sweep the distinct points in lexicographic order.

    Visited in (f0, f1) order, a distinct point is dominated exactly by the earlier points whose
    f1 is <= its own. The smallest f1 seen in each front is non-decreasing with the front index,
    so a point's rank is the number of fronts whose smallest f1 is <= its f1.
    """
    # Exact duplicates do not dominate each other; rank each distinct point once and share it.
    unique, inverse = np.unique(values, axis=0, return_inverse=True)
    front_min_f1: list[float] = []
    unique_ranks = np.empty(len(unique), dtype=np.int64)
    for i, f1 in enumerate(unique[:, 1].tolist()):
        rank = bisect.bisect_right(front_min_f1, f1)
        if rank == len(front_min_f1):
            front_min_f1.append(f1)
        else:
            front_min_f1[rank] = f1
        unique_ranks[i] = rank
    return unique_ranks[inverse.reshape(-1)]


def non_dominated_rank(values: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Rank of each point: 0 for the Pareto front, 1 for the front once that one is removed, ...

    `a` dominates `b` when `a <= b` in every objective and `a < b` in at least one; lower is
    better. Identical points share a rank. An empty input gives an empty array.
    """
    array = validate_values(values)
    if len(array) == 0:
        return np.zeros(0, dtype=np.int64)
    if array.shape[1] == 1:
        # One objective: fronts are the distinct values in ascending order.
        _, inverse = np.unique(array[:, 0], return_inverse=True)
        return inverse.reshape(-1).astype(np.int64)
    if array.shape[1] == 2:
        return _rank_two_objectives(array)
    return _rank_by_peeling(array)


def is_pareto_front(values: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Mask of the points that no other point dominates (rank 0)."""
    return non_dominated_rank(values) == 0


def crowding_distance(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """NSGA-II crowding distance of each point within the given set; call it once per front.

    Per objective, points sorted by that objective get the gap between their two neighbours
    divided by the objective's range; the first and last in that order get infinity. An
    objective whose values are all equal adds nothing, not even infinity at its ends (as in
    Optuna's NSGA-II), since its order says nothing about spread. With two or fewer points
    every distance is infinity. Ties are broken by row order (stable sort), so results repeat.
    """
    array = validate_values(values)
    n, n_objectives = array.shape
    distances = np.zeros(n, dtype=np.float64)
    if n <= 2:
        distances[:] = np.inf
        return distances
    for k in range(n_objectives):
        order = np.argsort(array[:, k], kind="stable")
        column = array[order, k]
        width = column[-1] - column[0]
        if width == 0:
            continue
        distances[order[1:-1]] += (column[2:] - column[:-2]) / width
        distances[order[0]] = np.inf
        distances[order[-1]] = np.inf
    return distances


def constrained_rank(
    values: npt.ArrayLike, violations: npt.ArrayLike | None
) -> npt.NDArray[np.int64]:
    """Rank with constraints: feasible points by Pareto rank, then infeasible ones by violation.

    `violations` has one total constraint violation per point; > 0 is infeasible, <= 0 feasible,
    and None means every point is feasible. Infeasible points all rank after every feasible one,
    the smallest violation first, equal violations sharing a rank. Ranks are consecutive from 0.
    """
    array = validate_values(values)
    if violations is None:
        return non_dominated_rank(array)
    try:
        violation = np.array(violations, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"violations must be numeric: {e}") from e
    if violation.shape != (len(array),):
        raise ValueError(
            f"violations must have shape ({len(array)},), one per point, "
            f"but has shape {violation.shape}"
        )
    bad = np.flatnonzero(np.isnan(violation))
    if bad.size:
        raise ValueError(f"violations contain NaN at index {int(bad[0])}")

    ranks = np.empty(len(array), dtype=np.int64)
    feasible = violation <= 0
    feasible_ranks = non_dominated_rank(array[feasible])
    ranks[feasible] = feasible_ranks
    first_infeasible_rank = int(feasible_ranks.max()) + 1 if feasible_ranks.size else 0
    # np.unique sorts, so the inverse index is the position of each violation among the
    # distinct values: ties share a rank and the ranks stay consecutive.
    _, inverse = np.unique(violation[~feasible], return_inverse=True)
    ranks[~feasible] = first_infeasible_rank + inverse.reshape(-1)
    return ranks
