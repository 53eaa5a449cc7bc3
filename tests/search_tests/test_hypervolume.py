"""Hypervolume, contributions, reference points, scaling and knees, checked against brute force.

The brute-force hypervolume splits space at every distinct coordinate and adds up the grid cells
that some point dominates: exact for any number of objectives, and cheap for up to ~30 points.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume

from edgetune.search import pareto
from edgetune.search.pareto import (
    hypervolume,
    hypervolume_contributions,
    is_pareto_front,
    knee_point,
    normalize,
    reference_point,
)


def _grid_hypervolume(values: np.ndarray, reference: np.ndarray) -> float:
    """Sum the volume of every grid cell whose lower corner some point weakly dominates."""
    points = values[np.all(values < reference, axis=1)]
    if len(points) == 0:
        return 0.0
    edges = [np.unique(np.append(points[:, k], reference[k])) for k in range(len(reference))]
    lowers = np.meshgrid(*[e[:-1] for e in edges], indexing="ij")
    widths = np.meshgrid(*[np.diff(e) for e in edges], indexing="ij")
    covered = np.zeros(lowers[0].shape, dtype=bool)
    for point in points:
        inside = np.ones_like(covered)
        for k, lower in enumerate(lowers):
            inside &= lower >= point[k]
        covered |= inside
    return float(np.sum(np.prod(widths, axis=0)[covered]))


def _inclusion_exclusion(values: np.ndarray, reference: np.ndarray) -> float:
    """Union of boxes [p, reference) by inclusion-exclusion over every subset; n <= 10."""
    points = values[np.all(values < reference, axis=1)]
    total = 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(points, size):
            corner = np.max(subset, axis=0)
            total += (-1) ** (size + 1) * float(np.prod(reference - corner))
    return total


def _brute_contributions(values: np.ndarray, reference: np.ndarray) -> list[float]:
    total = _grid_hypervolume(values, reference)
    return [
        total - _grid_hypervolume(np.delete(values, i, axis=0), reference)
        for i in range(len(values))
    ]


def _random_values(rng: np.random.Generator, n: int, m: int, integer: bool) -> np.ndarray:
    if integer:
        # Few distinct values: ties in single objectives and duplicate rows are common.
        return rng.integers(0, 5, size=(n, m)).astype(np.float64)
    return rng.random((n, m))


def _sphere_front(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """Points on the positive unit sphere: all mutually non-dominated."""
    points = np.abs(rng.normal(size=(n, m)))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


# Reference inside the data's range, so that some points lie outside or on its boundary.
_INTEGER_REFERENCE = 3.0
_CONTINUOUS_REFERENCE = 0.8


# --- hypervolume ---------------------------------------------------------------------------


def test_grid_reference_agrees_with_inclusion_exclusion() -> None:
    # The two brute forces share no code, so agreement checks the reference used below.
    rng = np.random.default_rng(3)
    for m in (2, 3, 4):
        for integer in (False, True):
            values = _random_values(rng, 8, m, integer)
            reference = np.full(m, _INTEGER_REFERENCE if integer else _CONTINUOUS_REFERENCE)
            assert _grid_hypervolume(values, reference) == pytest.approx(
                _inclusion_exclusion(values, reference), rel=1e-12, abs=1e-12
            )


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize(
    ("n_objectives", "n"),
    [(m, n) for m in (1, 2, 3) for n in (0, 1, 2, 5, 12, 30)]
    + [(4, n) for n in (1, 2, 5, 12, 20)]
    + [(5, n) for n in (3, 8)],
)
def test_hypervolume_matches_grid(n_objectives: int, n: int, integer: bool) -> None:
    rng = np.random.default_rng(100 * n + 10 * n_objectives + integer)
    reference = np.full(n_objectives, _INTEGER_REFERENCE if integer else _CONTINUOUS_REFERENCE)
    for _ in range(3):
        values = _random_values(rng, n, n_objectives, integer)
        expected = _grid_hypervolume(values, reference)
        assert hypervolume(values, reference) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("n_objectives", [2, 3])
@pytest.mark.parametrize("n", [1, 50, 400])
def test_hypervolume_matches_optuna(n_objectives: int, n: int) -> None:
    rng = np.random.default_rng(n + n_objectives)
    reference = np.full(n_objectives, 1.1)
    for values in (
        rng.random((n, n_objectives)) * 1.2,  # Some points beyond the reference.
        _sphere_front(rng, n, n_objectives),
        _random_values(rng, n, n_objectives, integer=True) / 4,
    ):
        # Optuna refuses points beyond the reference; they add nothing, so drop them first.
        inside = values[np.all(values <= reference, axis=1)]
        expected = compute_hypervolume(inside, reference) if len(inside) else 0.0
        assert hypervolume(values, reference) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_hypervolume_of_known_shapes() -> None:
    assert hypervolume([[1.0]], [3.0]) == 2.0
    assert hypervolume([[1.0, 2.0], [2.0, 1.0]], [3.0, 3.0]) == 3.0
    # A unit cube, and the same point twice.
    assert hypervolume([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [1.0, 1.0, 1.0]) == 1.0
    assert hypervolume(np.zeros((1, 4)), np.full(4, 2.0)) == 16.0


def test_points_not_strictly_dominating_the_reference_add_nothing() -> None:
    reference = [2.0, 2.0, 2.0]
    # On the boundary, beyond it in one objective, and beyond it everywhere.
    outside = [[0.0, 0.0, 2.0], [0.0, 3.0, 0.0], [5.0, 5.0, 5.0]]
    assert hypervolume(outside, reference) == 0.0
    assert hypervolume([*outside, [1.0, 1.0, 1.0]], reference) == 1.0


def test_empty_set_has_zero_hypervolume() -> None:
    assert hypervolume(np.empty((0, 3)), [1.0, 1.0, 1.0]) == 0.0
    assert hypervolume([], [1.0, 1.0]) == 0.0
    assert hypervolume(np.empty((0, 5)), np.ones(5)) == 0.0


def test_hypervolume_returns_python_float() -> None:
    assert type(hypervolume([[0.5, 0.5]], [1.0, 1.0])) is float


def test_hypervolume_ignores_row_order() -> None:
    rng = np.random.default_rng(5)
    values = _random_values(rng, 200, 3, integer=True)
    reference = np.full(3, 4.5)
    assert hypervolume(values, reference) == hypervolume(rng.permutation(values), reference)


@pytest.mark.parametrize(
    ("values", "reference", "message"),
    [
        ([[0.0, math.nan]], [1.0, 1.0], "values contain NaN or infinity at row 0"),
        ([[0.0, 0.0], [math.inf, 0.0]], [1.0, 1.0], "values contain NaN or infinity at row 1"),
        ([[0.0, 0.0]], [1.0, math.nan], "reference contains NaN or infinity at objective 1"),
        ([[0.0, 0.0]], [-math.inf, 1.0], "reference contains NaN or infinity at objective 0"),
        ([[0.0, 0.0]], [1.0, 1.0, 1.0], r"reference must have shape \(2,\)"),
        ([[0.0, 0.0]], [[1.0, 1.0]], r"reference must have shape \(2,\)"),
        ([[0.0, 0.0]], 1.0, r"reference must have shape \(2,\)"),
        ([0.0, 0.0], [1.0, 1.0], "values must be a 2-D array"),
        ([[0.0, 0.0]], ["a", "b"], "reference must be numeric"),
    ],
)
def test_hypervolume_rejects_bad_input(values: Any, reference: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hypervolume(values, reference)
    with pytest.raises(ValueError, match=message):
        hypervolume_contributions(values, reference)


def test_hypervolume_rejects_bad_sample_count() -> None:
    with pytest.raises(ValueError, match=r"The value of `n_samples` is 0, but must be >= 1\."):
        hypervolume([[0.0] * 4], [1.0] * 4, n_samples=0)


def test_unique_front_matches_pareto_mask() -> None:
    # 2,000 points span several of the filter's blocks; integer data adds duplicates.
    rng = np.random.default_rng(8)
    for values in (_random_values(rng, 2000, 4, integer=True), rng.random((2000, 4))):
        front = pareto._unique_front(values)
        expected = np.unique(values[is_pareto_front(values)], axis=0)
        assert front.tolist() == expected.tolist()


# --- Monte-Carlo path ----------------------------------------------------------------------


def _standard_error(volume: float, box: float, n_samples: int) -> float:
    p = volume / box
    return box * math.sqrt(p * (1 - p) / n_samples)


def test_monte_carlo_within_three_standard_errors_of_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    # Forced onto the estimate so that the brute force can still give the exact value. For a
    # normal estimate, |error| > 3 SE has probability ~0.27% per check; the seed makes the
    # outcome fixed, so this either always passes or always fails.
    monkeypatch.setattr(pareto, "_EXACT_HYPERVOLUME_MAX_POINTS", {})
    monkeypatch.setattr(pareto, "_EXACT_HYPERVOLUME_MAX_POINTS_MANY", 0)
    rng = np.random.default_rng(21)
    values = rng.random((25, 4))
    reference = np.full(4, 1.0)
    exact = _grid_hypervolume(values, reference)
    box = float(np.prod(reference - values.min(axis=0)))
    n_samples = 50_000
    estimate = hypervolume(values, reference, n_samples=n_samples, seed=3)
    assert estimate != exact  # It really took the estimate.
    assert abs(estimate - exact) <= 3 * _standard_error(exact, box, n_samples)
    # Seeded: the same call repeats exactly.
    assert hypervolume(values, reference, n_samples=n_samples, seed=3) == estimate


def test_monte_carlo_on_many_points_within_three_standard_errors() -> None:
    # 100 non-dominated points in 5 objectives exceed the exact path's limit (64), so the
    # public function estimates; the exact recursion (checked against the grid above) is the
    # truth. Flake probability as above, ~0.27%, and fixed by the seed.
    assert pareto._EXACT_HYPERVOLUME_MAX_POINTS[5] < 100
    rng = np.random.default_rng(34)
    values = _sphere_front(rng, 100, 5)
    reference = np.full(5, 1.1)
    exact = pareto._hypervolume_exact(values, reference)
    box = float(np.prod(reference - values.min(axis=0)))
    estimate = hypervolume(values, reference, n_samples=100_000, seed=1)
    assert estimate != exact
    assert abs(estimate - exact) <= 3 * _standard_error(exact, box, 100_000)


# --- contributions -------------------------------------------------------------------------


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize(("n_objectives", "n"), [(1, 6), (2, 12), (3, 12), (4, 8)])
def test_contributions_match_brute_force(n_objectives: int, n: int, integer: bool) -> None:
    rng = np.random.default_rng(7 * n + n_objectives + 100 * integer)
    reference = np.full(n_objectives, _INTEGER_REFERENCE if integer else _CONTINUOUS_REFERENCE)
    for _ in range(4):
        values = _random_values(rng, n, n_objectives, integer)
        contributions = hypervolume_contributions(values, reference)
        assert contributions.shape == (n,)
        assert contributions.dtype == np.float64
        np.testing.assert_allclose(
            contributions, _brute_contributions(values, reference), rtol=1e-10, atol=1e-12
        )


def test_contributions_of_dominated_duplicate_and_outside_points_are_zero() -> None:
    values = np.array(
        [
            [1.0, 1.0],  # Dominates [2, 2]: its removal uncovers [2, 2]'s box only partly.
            [2.0, 2.0],  # Dominated.
            [0.0, 3.0],  # Duplicated: either copy covers for the other.
            [0.0, 3.0],
            [3.0, 0.5],  # Non-dominated, alone.
            [0.5, 5.0],  # Beyond the reference in f1.
        ]
    )
    reference = np.array([4.0, 4.0])
    contributions = hypervolume_contributions(values, reference)
    assert contributions.tolist() == [3.0, 0.0, 0.0, 0.0, 0.5, 0.0]
    assert contributions.tolist() == pytest.approx(_brute_contributions(values, reference))


def test_contributions_of_empty_set() -> None:
    assert hypervolume_contributions(np.empty((0, 3)), [1.0, 1.0, 1.0]).shape == (0,)
    assert hypervolume_contributions([], [1.0, 1.0]).shape == (0,)


@pytest.mark.parametrize("integer", [False, True])
def test_two_objective_closed_form_matches_general_path(integer: bool) -> None:
    # The closed form and the limit-and-sweep path share nothing beyond np.unique.
    rng = np.random.default_rng(55 + integer)
    values = _random_values(rng, 300, 2, integer) if integer else rng.random((300, 2))
    reference = np.full(2, 3.5 if integer else 0.9)
    inside = values[np.all(values < reference, axis=1)]
    np.testing.assert_allclose(
        pareto._contributions_2d(inside, reference),
        pareto._contributions_by_limiting(inside, reference),
        rtol=1e-10,
        atol=1e-14,
    )


@pytest.mark.parametrize("n_objectives", [2, 3])
def test_contributions_on_larger_fronts_match_definition(n_objectives: int) -> None:
    rng = np.random.default_rng(13)
    values = _sphere_front(rng, 200, n_objectives)
    reference = np.full(n_objectives, 1.1)
    total = hypervolume(values, reference)
    expected = [
        total - hypervolume(np.delete(values, i, axis=0), reference) for i in range(len(values))
    ]
    # HV(all) - HV(all without i) cancels most digits, hence the absolute tolerance.
    np.testing.assert_allclose(
        hypervolume_contributions(values, reference), expected, rtol=1e-6, atol=1e-12
    )


# --- reference point and normalize ---------------------------------------------------------


def test_reference_point_adds_margin_of_the_range() -> None:
    values = [[0.0, 10.0, 3.0, 0.0, -5.0], [1.0, 30.0, 3.0, 0.0, -5.0]]
    np.testing.assert_allclose(reference_point(values), [1.1, 32.0, 3.3, 0.1, -4.5])
    np.testing.assert_allclose(reference_point(values, margin=0), [1.0, 30.0, 3.0, 0.0, -5.0])
    np.testing.assert_allclose(reference_point(values, margin=1.0), [2.0, 50.0, 6.0, 1.0, 0.0])


def test_reference_point_with_positive_margin_counts_every_point() -> None:
    rng = np.random.default_rng(2)
    values = _sphere_front(rng, 50, 3)
    reference = reference_point(values)
    assert np.all(values < reference)
    assert np.count_nonzero(hypervolume_contributions(values, reference)) == 50


def test_reference_point_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"^The value of `margin` is -1, but must be >= 0\.$"):
        reference_point([[0.0, 1.0]], margin=-1)
    with pytest.raises(ValueError, match="The value of `margin` is nan"):
        reference_point([[0.0, 1.0]], margin=math.nan)
    with pytest.raises(ValueError, match="must be finite"):
        reference_point([[0.0, 1.0]], margin=math.inf)
    with pytest.raises(ValueError, match="at least one point"):
        reference_point(np.empty((0, 2)))
    with pytest.raises(ValueError, match="NaN or infinity at row 1"):
        reference_point([[0.0, 1.0], [math.nan, 1.0]])


def test_normalize_with_data_and_given_bounds() -> None:
    values = np.array([[0.0, 10.0, 5.0], [2.0, 20.0, 5.0], [1.0, 15.0, 5.0]])
    np.testing.assert_allclose(
        normalize(values), [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.5, 0.5, 0.0]]
    )
    np.testing.assert_allclose(
        normalize(values, lower=[0.0, 0.0, 0.0], upper=[4.0, 20.0, 10.0]),
        [[0.0, 0.5, 0.5], [0.5, 1.0, 0.5], [0.25, 0.75, 0.5]],
    )
    # One bound given, the other from the data; values past a given bound are not clipped.
    np.testing.assert_allclose(normalize(values, upper=[1.0, 20.0, 5.0])[:, 0], [0.0, 2.0, 1.0])
    assert normalize(np.empty((0, 2))).shape == (0, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lower": [0.0]}, r"lower must have shape \(2,\)"),
        ({"upper": [1.0, math.inf]}, "upper contains NaN or infinity at objective 1"),
        ({"lower": [math.nan, 0.0]}, "lower contains NaN or infinity at objective 0"),
        ({"lower": [2.0, 0.0], "upper": [1.0, 1.0]}, "upper must be >= lower"),
    ],
)
def test_normalize_rejects_bad_bounds(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize([[0.0, 1.0]], **kwargs)


def test_normalize_rejects_nan_values() -> None:
    with pytest.raises(ValueError, match="NaN or infinity at row 0"):
        normalize([[math.nan, 1.0]])


# --- knee ----------------------------------------------------------------------------------


def test_knee_of_convex_front_is_the_elbow() -> None:
    front = [[0.0, 10.0], [0.5, 4.0], [1.0, 1.0], [4.0, 0.5], [10.0, 0.0]]
    dominated = [[2.0, 2.0], [11.0, 11.0], [1.5, 9.0]]
    values = np.array(dominated + front)
    assert knee_point(values) == 3 + 2
    # The index follows the rows wherever the elbow sits.
    order = np.random.default_rng(0).permutation(len(values))
    knee = knee_point(values[order])
    assert knee is not None
    assert order[knee] == 3 + 2


def test_knee_of_three_objective_front_is_non_dominated() -> None:
    rng = np.random.default_rng(9)
    values = np.concatenate([_sphere_front(rng, 60, 3), rng.random((60, 3)) + 1.0])
    # A convex 3-D front: points on the sphere bulge towards the ideal point.
    values[:60] = 1.0 - values[:60]
    knee = knee_point(values)
    assert knee is not None
    assert is_pareto_front(values)[knee]


def test_knee_of_three_objective_front_with_a_clear_knee() -> None:
    # Three extremes and one point near the ideal corner; the rest are close to the plane.
    values = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.4, 0.3, 0.3], [0.1, 0.1, 0.1]]
    assert knee_point(values) == 4


def test_knee_falls_back_to_closest_to_ideal() -> None:
    assert knee_point(np.empty((0, 2))) is None
    # One objective: the best point.
    assert knee_point([[3.0], [1.0], [2.0], [1.0]]) == 1
    # A single distinct point (repeated).
    assert knee_point([[1.0, 1.0], [1.0, 1.0]]) == 0
    # Linear front: nothing lies below the line through the extremes.
    assert knee_point([[0.0, 4.0], [1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [4.0, 0.0]]) == 2
    # Concave front: every inner point lies above that line; the middle is closest to ideal.
    concave = [[0.0, 1.0], [0.3, 0.9], [0.5, 0.6], [0.9, 0.3], [1.0, 0.0]]
    assert knee_point(concave) == 2
    # 3 objectives whose extremes coincide: two of the three are the same point.
    assert knee_point([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.5, 0.5, 0.5]]) == 2


def test_knee_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN or infinity"):
        knee_point([[math.nan, 0.0]])
