"""Pareto kernels checked against brute-force Python references on seeded random data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgetune.search import pareto
from edgetune.search.pareto import (
    _rank_by_peeling,
    constrained_rank,
    crowding_distance,
    is_pareto_front,
    non_dominated_rank,
    validate_values,
)

SIZES = [0, 1, 2, 50, 300]


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def _reference_rank(values: np.ndarray) -> list[int]:
    """Repeatedly take the points that no remaining point dominates."""
    rows = values.tolist()
    ranks = [-1] * len(rows)
    remaining = set(range(len(rows)))
    rank = 0
    while remaining:
        front = {i for i in remaining if not any(_dominates(rows[j], rows[i]) for j in remaining)}
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
    return ranks


def _reference_crowding(values: np.ndarray) -> list[float]:
    rows = values.tolist()
    n = len(rows)
    if n <= 2:
        return [math.inf] * n
    distances = [0.0] * n
    for k in range(len(rows[0])):
        order = sorted(range(n), key=lambda i: rows[i][k])  # stable, like the kernel
        low, high = rows[order[0]][k], rows[order[-1]][k]
        if high == low:
            continue
        distances[order[0]] = math.inf
        distances[order[-1]] = math.inf
        for pos in range(1, n - 1):
            gap = rows[order[pos + 1]][k] - rows[order[pos - 1]][k]
            distances[order[pos]] += gap / (high - low)
    return distances


def _integer_values(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    # A small range makes ties in single objectives and exact duplicate rows common.
    return rng.integers(0, 6, size=(n, m)).astype(np.float64)


@pytest.mark.parametrize("n_objectives", [1, 2, 3, 4])
@pytest.mark.parametrize("n", SIZES)
def test_rank_matches_reference(n: int, n_objectives: int) -> None:
    rng = np.random.default_rng(1000 * n + n_objectives)
    for _ in range(3):
        values = _integer_values(rng, n, n_objectives)
        expected = _reference_rank(values)
        ranks = non_dominated_rank(values)
        assert ranks.shape == (n,)
        assert ranks.dtype.kind == "i"
        assert ranks.tolist() == expected
        assert is_pareto_front(values).tolist() == [r == 0 for r in expected]


@pytest.mark.parametrize("n", SIZES)
def test_peeling_agrees_on_two_objectives(n: int) -> None:
    # Two objectives normally take the sort-based path; the general path must agree.
    rng = np.random.default_rng(7 + n)
    values = _integer_values(rng, n, 2)
    assert _rank_by_peeling(values).tolist() == _reference_rank(values)


@pytest.mark.parametrize("block_pairs", [1, 7, 200])
def test_rank_is_independent_of_block_size(
    monkeypatch: pytest.MonkeyPatch, block_pairs: int
) -> None:
    # Tiny blocks force many chunks, including ragged last ones, through the same code paths.
    monkeypatch.setattr(pareto, "_BLOCK_PAIRS", block_pairs)
    rng = np.random.default_rng(11)
    values = _integer_values(rng, 60, 3)
    assert non_dominated_rank(values).tolist() == _reference_rank(values)


@pytest.mark.parametrize("n_objectives", [2, 3])
def test_rank_on_continuous_values(n_objectives: int) -> None:
    rng = np.random.default_rng(42)
    values = rng.normal(size=(200, n_objectives))
    assert non_dominated_rank(values).tolist() == _reference_rank(values)


def test_duplicates_share_rank_and_ranks_are_consecutive() -> None:
    values = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [2.0, 2.0], [0.0, 3.0]])
    assert non_dominated_rank(values).tolist() == [0, 0, 1, 1, 0]


def test_empty_input_gives_empty_results() -> None:
    empty = np.empty((0, 3))
    assert non_dominated_rank(empty).shape == (0,)
    assert is_pareto_front(empty).shape == (0,)
    assert crowding_distance(empty).shape == (0,)
    assert constrained_rank(empty, np.empty(0)).shape == (0,)


def test_large_input_runs() -> None:
    values = np.random.default_rng(0).random((2000, 3))
    ranks = non_dominated_rank(values)
    assert ranks.shape == (2000,)
    assert ranks.min() == 0


def test_validate_values_returns_float_copy() -> None:
    source = np.array([[1, 2], [3, 4]])
    array = validate_values(source)
    assert array.dtype == np.float64
    array[0, 0] = 99
    assert source[0, 0] == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_name_the_row(bad: float) -> None:
    values = np.zeros((4, 2))
    values[2, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinity at row 2"):
        non_dominated_rank(values)
    with pytest.raises(ValueError, match="NaN or infinity at row 2"):
        crowding_distance(values)


@pytest.mark.parametrize("bad", [[1.0, 2.0, 3.0], [[[1.0]]], 5.0, np.empty((3, 0))])
def test_wrong_shape_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match=r"2-D array of shape \(n_points, n_objectives\)"):
        non_dominated_rank(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("n_objectives", [1, 2, 3, 4])
@pytest.mark.parametrize("n", SIZES)
def test_crowding_matches_reference(n: int, n_objectives: int) -> None:
    rng = np.random.default_rng(500 + 10 * n + n_objectives)
    for values in (_integer_values(rng, n, n_objectives), rng.random((n, n_objectives))):
        distances = crowding_distance(values)
        assert distances.shape == (n,)
        np.testing.assert_allclose(distances, _reference_crowding(values), rtol=1e-12)


def test_crowding_boundaries_are_infinite() -> None:
    values = np.array([[0.0, 4.0], [1.0, 2.0], [2.0, 1.5], [4.0, 0.0]])
    distances = crowding_distance(values)
    assert np.isinf(distances[[0, 3]]).all()
    assert np.isfinite(distances[[1, 2]]).all()
    # Point 1: neighbours span 2/4 of objective 0 and 2.5/4 of objective 1.
    assert distances[1] == pytest.approx(2 / 4 + 2.5 / 4)


def test_crowding_of_two_or_fewer_points_is_infinite() -> None:
    assert np.isinf(crowding_distance([[1.0, 2.0], [2.0, 1.0]])).all()
    assert np.isinf(crowding_distance([[1.0, 2.0]])).all()


def test_crowding_ignores_objectives_with_zero_range() -> None:
    values = np.array([[0.0, 5.0], [1.0, 5.0], [3.0, 5.0], [4.0, 5.0]])
    distances = crowding_distance(values)
    assert distances[1:3].tolist() == [3 / 4, 3 / 4]
    # All equal everywhere: no objective says anything, so every distance is zero.
    assert crowding_distance(np.ones((4, 2))).tolist() == [0.0] * 4


def test_constrained_rank_without_violations_is_pareto_rank() -> None:
    values = _integer_values(np.random.default_rng(3), 50, 3)
    assert constrained_rank(values, None).tolist() == _reference_rank(values)


def test_constrained_rank_puts_feasible_first_and_orders_infeasible_by_violation() -> None:
    values = np.array(
        [
            [5.0, 5.0],  # feasible, dominated by row 1 -> rank 1
            [1.0, 1.0],  # feasible -> rank 0
            [0.0, 0.0],  # best objectives but infeasible (0.5) -> rank 3
            [0.0, 9.0],  # feasible, on the front -> rank 0
            [9.0, 9.0],  # infeasible (0.1) -> rank 2
            [0.0, 0.0],  # infeasible (0.5), tie with row 2 -> rank 3
            [0.0, 0.0],  # infeasible (2.0) -> rank 4
        ]
    )
    violations = [0.0, -1.0, 0.5, 0.0, 0.1, 0.5, 2.0]
    assert constrained_rank(values, violations).tolist() == [1, 0, 3, 0, 2, 3, 4]


@pytest.mark.parametrize("n", [1, 2, 50, 300])
def test_constrained_rank_random(n: int) -> None:
    rng = np.random.default_rng(900 + n)
    values = _integer_values(rng, n, 3)
    violations = np.where(rng.random(n) < 0.4, rng.integers(1, 4, size=n), 0).astype(float)
    ranks = constrained_rank(values, violations)
    feasible = violations <= 0

    assert ranks.shape == (n,)
    assert sorted(set(ranks.tolist())) == list(range(len(set(ranks.tolist()))))
    assert ranks[feasible].tolist() == _reference_rank(values[feasible])
    if feasible.any() and (~feasible).any():
        assert ranks[feasible].max() < ranks[~feasible].min()
    infeasible_ranks = ranks[~feasible]
    infeasible_violations = violations[~feasible]
    for i in range(len(infeasible_ranks)):
        for j in range(len(infeasible_ranks)):
            if infeasible_violations[i] < infeasible_violations[j]:
                assert infeasible_ranks[i] < infeasible_ranks[j]
            elif infeasible_violations[i] == infeasible_violations[j]:
                assert infeasible_ranks[i] == infeasible_ranks[j]


def test_constrained_rank_all_infeasible_starts_at_zero() -> None:
    ranks = constrained_rank(np.zeros((3, 2)), [3.0, 1.0, 3.0])
    assert ranks.tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("violations", "message"),
    [([0.0, 1.0], r"shape \(3,\)"), ([0.0, np.nan, 1.0], "NaN at index 1")],
)
def test_constrained_rank_rejects_bad_violations(violations: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        constrained_rank(np.zeros((3, 2)), violations)
