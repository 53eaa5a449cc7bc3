"""Read-side queries over Optuna's tables that the Optuna storage API does not offer cheaply."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import bindparam, text

from edgetune.storage.db import Database


def trial_state_counts(db: Database, study_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """{study name: {"COMPLETE": n, "RUNNING": n, ...}} in one query, however many trials."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    if not study_names:
        return counts
    # Optuna's schema (tables `studies`, `trials`, column `state`) is stable across its
    # versions; counting in SQL avoids loading every trial of every listed job.
    query = text(
        "SELECT s.study_name, t.state, COUNT(*) FROM trials t "
        "JOIN studies s ON s.study_id = t.study_id "
        "WHERE s.study_name IN :names GROUP BY s.study_name, t.state"
    ).bindparams(bindparam("names", expanding=True))
    with db.engine.connect() as conn:
        for name, state, n in conn.execute(query, {"names": list(study_names)}):
            counts[name][str(state).rsplit(".", 1)[-1].upper()] = int(n)
    return counts

