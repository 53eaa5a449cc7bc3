"""Backends that run a job's trials: `optuna` now; `ray` joins it later."""

from __future__ import annotations

from edgetune.search.backends.optuna import JobOutcome, OptunaBackend

__all__ = ["JobOutcome", "OptunaBackend"]
