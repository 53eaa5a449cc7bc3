"""Read-side queries over a study's trials; they live in `study_store`, the one module that
reads Optuna's tables, and are named here for the API and the events stream."""

from __future__ import annotations

from edgetune.storage.study_store import (
    INFRA_FAILURE_KEY,
    CompletedTrial,
    completed_trials,
    count_completed,
    finished_trials,
    trial_params,
    trial_state_counts,
    trial_user_attrs,
    trials_page,
)

__all__ = [
    "INFRA_FAILURE_KEY",
    "CompletedTrial",
    "completed_trials",
    "count_completed",
    "finished_trials",
    "trial_params",
    "trial_state_counts",
    "trial_user_attrs",
    "trials_page",
]
