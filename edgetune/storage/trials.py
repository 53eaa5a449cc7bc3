"""Read-side queries over Optuna's tables that the Optuna storage API does not offer cheaply."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BindParameter, bindparam, text

from edgetune.storage.db import Database

#: A failed trial carrying this user attribute failed because of the infrastructure (its worker
#: stopped, the job was cancelled), not because of its parameters: it does not use up budget.
INFRA_FAILURE_KEY = "edgetune:infra_failure"


def trial_state_counts(db: Database, study_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """{study name: {"COMPLETE": n, "RUNNING": n, ..., "FAIL_INFRA": n}} in two queries.

    "FAIL" counts trials that failed by their parameters; "FAIL_INFRA" those failed because
    their worker stopped or died, which are run again and do not use budget.
    """
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    if not study_names:
        return counts
    # Optuna's schema (tables `studies`, `trials`, column `state`) is stable across its
    # versions; counting in SQL avoids loading every trial of every listed job.
    states = text(
        "SELECT s.study_name, t.state, COUNT(*) FROM trials t "
        "JOIN studies s ON s.study_id = t.study_id "
        "WHERE s.study_name IN :names GROUP BY s.study_name, t.state"
    ).bindparams(bindparam("names", expanding=True))
    infra = text(
        "SELECT s.study_name, COUNT(*) FROM trials t "
        "JOIN studies s ON s.study_id = t.study_id "
        "JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
        "WHERE s.study_name IN :names AND t.state = 'FAIL' AND a.key = :key "
        "GROUP BY s.study_name"
    ).bindparams(bindparam("names", expanding=True))
    with db.engine.connect() as conn:
        for name, state, n in conn.execute(states, {"names": list(study_names)}):
            counts[name][_state(state)] = int(n)
        for name, n in conn.execute(infra, {"names": list(study_names),
                                            "key": INFRA_FAILURE_KEY}):
            counts[name]["FAIL_INFRA"] = int(n)
            counts[name]["FAIL"] = counts[name].get("FAIL", 0) - int(n)
    return counts


@dataclass(frozen=True)
class CompletedTrial:
    """A completed trial's objective values, read straight from Optuna's tables."""

    trial_id: int
    number: int
    completed_at: datetime | None
    values: tuple[float, ...]


def completed_trials(db: Database, study_name: str) -> list[CompletedTrial]:
    """Every COMPLETE trial of the study with its values, in two queries, ordered by trial id.

    Building FrozenTrials through Optuna's storage costs about a millisecond per trial; the
    Pareto view of a job with 10,000 trials needs only these columns.
    """
    with db.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT t.trial_id, t.number, t.datetime_complete, v.objective, v.value "
                "FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "JOIN trial_values v ON v.trial_id = t.trial_id "
                "WHERE s.study_name = :name AND t.state = 'COMPLETE' "
                "ORDER BY t.trial_id, v.objective"
            ),
            {"name": study_name},
        ).all()
    out: list[CompletedTrial] = []
    current: list[float] = []
    for i, (trial_id, number, completed, _objective, value) in enumerate(rows):
        current.append(float("nan") if value is None else float(value))
        if i + 1 == len(rows) or rows[i + 1][0] != trial_id:
            out.append(CompletedTrial(trial_id, int(number), _utc(completed), tuple(current)))
            current = []
    return out


def trial_user_attrs(
    db: Database, trial_ids: Sequence[int], *, keys: Sequence[str] | None = None
) -> dict[int, dict[str, Any]]:
    """User attributes of the given trials (only `keys`, when given)."""
    out: dict[int, dict[str, Any]] = defaultdict(dict)
    if not trial_ids:
        return out
    query = "SELECT trial_id, key, value_json FROM trial_user_attributes WHERE trial_id IN :ids"
    params: dict[str, Any] = {"ids": list(trial_ids)}
    binds: list[BindParameter[Any]] = [bindparam("ids", expanding=True)]
    if keys is not None:
        query += " AND key IN :keys"
        params["keys"] = list(keys)
        binds.append(bindparam("keys", expanding=True))
    with db.engine.connect() as conn:
        for trial_id, key, value_json in conn.execute(text(query).bindparams(*binds), params):
            out[trial_id][key] = json.loads(value_json)
    return out


def trial_params(db: Database, trial_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Sampled parameters of the given trials, in their external form (choices, not indices)."""
    from optuna.distributions import json_to_distribution

    out: dict[int, dict[str, Any]] = defaultdict(dict)
    if not trial_ids:
        return out
    query = text(
        "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params "
        "WHERE trial_id IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    distributions: dict[str, Any] = {}
    with db.engine.connect() as conn:
        for trial_id, name, value, dist_json in conn.execute(query, {"ids": list(trial_ids)}):
            dist = distributions.get(dist_json)
            if dist is None:
                dist = distributions[dist_json] = json_to_distribution(dist_json)
            out[trial_id][name] = dist.to_external_repr(value)
    return out


def _state(raw: object) -> str:
    # Optuna stores TrialState's name, e.g. "COMPLETE"; some drivers hand back the enum.
    return str(raw).rsplit(".", 1)[-1].upper()


def _utc(moment: datetime | str | None) -> datetime | None:
    # Optuna stores naive UTC datetimes; through a text query SQLite hands back strings.
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.replace(tzinfo=UTC)


def count_completed(db: Database, study_name: str) -> int:
    """How many trials of the study are COMPLETE; they never leave that state."""
    with db.engine.connect() as conn:
        return int(conn.execute(
            text(
                "SELECT COUNT(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = :name AND t.state = 'COMPLETE'"
            ),
            {"name": study_name},
        ).scalar_one())


def finished_trials(db: Database, study_name: str) -> list[tuple[int, int, str]]:
    """(trial id, number, state) of every trial that has ended: COMPLETE, PRUNED or FAIL."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT t.trial_id, t.number, t.state FROM trials t "
                "JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = :name "
                "AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL') ORDER BY t.trial_id"
            ),
            {"name": study_name},
        ).all()
    return [(int(i), int(n), _state(state)) for i, n, state in rows]
