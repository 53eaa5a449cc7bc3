"""Constraint values of a trial, from the metrics it recorded, in Optuna's convention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from edgetune.spec import ConstraintSpec

#: Violation charged when a constrained metric was never measured (a trial pruned before it).
UNMEASURED = 1e12


def violations(constraints: Sequence[ConstraintSpec], metrics: Mapping[str, float]) -> list[float]:
    """One value per constraint: <= 0 when met, the distance past the bound when not."""
    out = []
    for c in constraints:
        value = metrics.get(c.key)
        out.append(UNMEASURED if value is None else c.violation(float(value)))
    return out


def total_violation(constraints: Sequence[ConstraintSpec], metrics: Mapping[str, float]) -> float:
    return sum(max(0.0, v) for v in violations(constraints, metrics))
