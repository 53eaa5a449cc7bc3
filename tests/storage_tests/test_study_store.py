"""`study_store`, the one module over Optuna's tables: what it reads and writes is what Optuna
reads and writes, on SQLite and PostgreSQL, and a driver error comes out as `StorageError`."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from edgetune.errors import StorageError
from edgetune.storage import open_database, study_store
from edgetune.storage.optuna_storage import optuna_storage

REPO = Path(__file__).resolve().parents[2]


def _study(url: str, directions: list[str] | None = None) -> optuna.Study:
    return optuna.create_study(storage=optuna_storage(url), directions=directions or ["minimize"])


def test_a_duplicate_parameter_row_drops_only_the_duplicate(database_url: str) -> None:
    # Bug 4: one duplicate row rolled back every parameter of the trial, with no error. The
    # duplicate here is written by a second storage (another process asking the same trial).
    study = _study(database_url)
    trial = study.ask()
    other = optuna.storages.RDBStorage(database_url)
    try:
        with study_store.params_in_one_write(trial):
            trial.suggest_float("x", 0, 1)
            y = trial.suggest_float("y", 0, 1)
            z = trial.suggest_int("z", 1, 9)
            other.set_trial_param(study_store.trial_id(trial), "y", 0.5,
                                  optuna.distributions.FloatDistribution(0, 1))
    finally:
        other.engine.dispose()
    stored = optuna_storage(database_url).get_trial(study_store.trial_id(trial)).params
    assert set(stored) == {"x", "y", "z"}, "the other parameters are stored"
    assert stored["y"] == 0.5 and stored["z"] == z  # the duplicate kept as first written
    assert y is not None


def test_infinite_values_read_back_as_optuna_reads_them(database_url: str) -> None:
    # Bug 5: `trial_values.value` is NULL for ±inf (the kind is in `value_type`); it read NaN.
    study = _study(database_url, ["maximize", "minimize", "minimize"])
    study.tell(study.ask(), [math.inf, -math.inf, 1.5])
    db = open_database(database_url, migrate=False)
    try:
        [trial] = study_store.completed_trials(db, study.study_name)
    finally:
        db.dispose()
    assert trial.values == (math.inf, -math.inf, 1.5) == tuple(study.trials[0].values)


def test_a_driver_error_in_the_budget_counts_is_a_storage_error(tmp_path: Path) -> None:
    # Bug 8: the raw SQL of the budget counts let the driver's error through, which failed the
    # whole job instead of being retried. A missing table is a real driver error.
    url = f"sqlite:///{tmp_path / 'edgetune.db'}"
    open_database(url).dispose()
    study = _study(url)
    study.ask()
    assert study_store.trial_counts(study).running == 1
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE trial_user_attributes RENAME TO moved_away"))
    try:
        with pytest.raises(StorageError, match="counting the study's trials"):
            study_store.trial_counts(study)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE moved_away RENAME TO trial_user_attributes"))
        engine.dispose()


def test_the_result_is_written_in_one_transaction(database_url: str) -> None:
    study = _study(database_url, ["minimize", "maximize"])
    trial = study.ask()
    engine = optuna_storage(database_url).engine
    events: list[str] = []

    def statement(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE")):
            events.append("write")

    def commit(_conn: object) -> None:
        events.append("commit")

    sa.event.listen(engine, "before_cursor_execute", statement)
    sa.event.listen(engine, "commit", commit)
    try:
        state = study_store.finish_trial(study, study_store.trial_id(trial), TrialState.COMPLETE,
                                         [1.0, 2.0], {"accuracy": 2.0, "artifact": {"a": 1}})
    finally:
        sa.event.remove(engine, "before_cursor_execute", statement)
        sa.event.remove(engine, "commit", commit)
    writes = [i for i, e in enumerate(events) if e == "write"]
    assert state == TrialState.COMPLETE and len(writes) >= 4  # 2 attributes, 2 values, state
    assert "commit" not in events[writes[0]:writes[-1]], "no commit between the writes"
    [done] = optuna.load_study(study_name=study.study_name, storage=database_url).trials
    assert done.values == [1.0, 2.0] and done.user_attrs == {"accuracy": 2.0,
                                                             "artifact": {"a": 1}}
    assert done.datetime_complete is not None
    # Told again (a worker that lost the trial to another): left as it is.
    again = study_store.finish_trial(study, done._trial_id, TrialState.FAIL, None, {"x": 1})
    assert again == TrialState.COMPLETE


def test_trials_are_paged_in_sql(database_url: str) -> None:
    study = _study(database_url)
    for i in range(7):
        trial = study.ask()
        trial.suggest_int("i", 0, 10)
        if i % 2:
            study.tell(trial, float(i))
        else:
            study.tell(trial, state=TrialState.PRUNED)
    page, count = study_store.trials_page(database_url, study.study_name, offset=2, limit=3)
    assert count == 7 and [t.number for t in page] == [2, 3, 4]
    assert [t.params for t in page] == [t.params for t in study.trials[2:5]]
    page, count = study_store.trials_page(database_url, study.study_name, state="complete",
                                          offset=1, limit=10)
    assert count == 3 and [t.number for t in page] == [3, 5]
    assert study_store.trials_page(database_url, study.study_name, offset=7) == ([], 7)
    with pytest.raises(KeyError):
        study_store.trials_page(database_url, "no-such-study")


def test_trials_are_indexed_by_study_and_number(database_url: str) -> None:
    """A page of trials by number reads that page (`trials_page`), not the whole study."""
    engine = optuna_storage(database_url).engine
    indexes = {i["name"]: i["column_names"] for i in sa.inspect(engine).get_indexes("trials")}
    assert indexes["edgetune_ix_trials_study_number"] == ["study_id", "number"]


def test_optuna_private_names_are_used_in_study_store_only() -> None:
    pattern = re.compile(r"optuna[a-zA-Z_.]*\._[a-z]|\._storage|_trial_id|_study_id")
    tables = re.compile(r"\b(FROM|JOIN|INTO|UPDATE)\s+(trials|studies|trial_\w+)\b"
                        r"|\btable\(\s*[\"'](trials|studies|trial_\w+)[\"']", re.I)
    owner = REPO / "edgetune" / "storage" / "study_store.py"
    offenders = []
    for path in (REPO / "edgetune").rglob("*.py"):
        if path == owner:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) or tables.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "Optuna's private names or tables outside study_store:\n" + "\n".join(
        offenders)
    # The same check the issue names, as a shell user runs it.
    grep = subprocess.run(
        ["grep", "-rlE", r"optuna[a-zA-Z_.]*\._[a-z]|\._storage|_trial_id|_study_id", "edgetune"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    assert grep.stdout.split() == ["edgetune/storage/study_store.py"]
