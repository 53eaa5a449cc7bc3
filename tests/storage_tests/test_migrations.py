"""Schema upgrades: every released schema's frozen database reaches head with its data intact,
and migrating an empty database revision by revision gives exactly the models' schema."""

from __future__ import annotations

import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from optuna.trial import TrialState

from edgetune.spec import JobSpec
from edgetune.storage import (
    JOB_ID_ATTR,
    JobRepository,
    JobStatus,
    make_engine,
    open_database,
    optuna_storage,
)
from edgetune.storage.migrations import (
    VERSION_TABLE,
    alembic_config,
    current_revision,
    head_revision,
    upgrade,
)
from edgetune.storage.models import PREFIX, Base
from edgetune.storage.trials import completed_trials, trial_state_counts

#: One SQLite database per released schema, made by tests/data/schemas/freeze.py.
FROZEN = sorted((Path(__file__).parents[1] / "data" / "schemas").glob("edgetune-*.sqlite"))


def frozen_revision(path: Path) -> str:
    return path.stem.removeprefix("edgetune-")


def revisions_in_order() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config(""))
    assert len(script.get_heads()) == 1, "the migrations must form one line, with one head"
    return [r.revision for r in reversed(list(script.walk_revisions("base", "heads")))]


def test_every_revision_but_head_has_a_frozen_database() -> None:
    # A released schema without its frozen database would go untested once a newer one lands.
    # The head may be the one being written, which is frozen when it is released.
    frozen = {frozen_revision(p) for p in FROZEN}
    assert set(revisions_in_order()[:-1]) <= frozen
    assert frozen <= set(revisions_in_order()), "a frozen database of an unknown revision"


@pytest.mark.parametrize("frozen", FROZEN, ids=[p.name for p in FROZEN])
def test_a_frozen_database_is_one_untouched_file(frozen: Path) -> None:
    # Opening a frozen file itself (not a copy) with our engine would turn it to WAL mode.
    assert not Path(f"{frozen}-wal").exists() and not Path(f"{frozen}-shm").exists()
    conn = sqlite3.connect(f"file:{frozen}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


@pytest.fixture(params=FROZEN, ids=[p.name for p in FROZEN])
def frozen_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A copy of a frozen database, which the test may change: never open the file itself."""
    path = tmp_path / request.param.name
    shutil.copyfile(request.param, path)
    return f"sqlite:///{path}"


def test_a_frozen_database_upgrades_to_head_and_reads_back(frozen_url: str) -> None:
    engine = make_engine(frozen_url)
    frozen_at = current_revision(engine)
    engine.dispose()
    assert frozen_at == frozen_revision(Path(frozen_url))

    db = open_database(frozen_url)
    try:
        assert current_revision(db.engine) == head_revision()
        jobs = JobRepository(db)
        listed, count = jobs.list()
        assert count == 3
        by_name = {job.name: job for job in listed}
        assert {name: job.status for name, job in by_name.items()} == {
            "digits-nas": JobStatus.SUCCEEDED, "digits-tpe": JobStatus.CANCELLED,
            "zdt1-ray": JobStatus.QUEUED,
        }
        for job in listed:
            assert jobs.get(job.id).spec == job.spec
            assert job.spec.name == job.name
            assert job.created_at.tzinfo is not None
        finished, cancelled, queued = (by_name[n] for n in ("digits-nas", "digits-tpe", "zdt1-ray"))
        assert queued.spec.algorithm.backend == "ray"
        assert cancelled.error == "cancelled before it started" and cancelled.cancel_requested
        assert finished.started_at is not None and finished.finished_at is not None
        assert finished.started_at <= finished.finished_at and finished.lease_owner is None

        _check_the_finished_study(db.url, finished.study_name, finished.id)
        counts = trial_state_counts(db, [finished.study_name, queued.study_name])
        assert counts[finished.study_name] == {"COMPLETE": 1, "PRUNED": 1, "FAIL": 1}
        [complete] = completed_trials(db, finished.study_name)
        assert complete.number == 0 and complete.values == (0.95, 1.25, 48_200.0)

        # The upgraded database takes new work: a job submitted and claimed, a trial told.
        new = jobs.create(JobSpec.model_validate({"name": "after-upgrade"}))
        claimed = [jobs.claim(f"w{i}", lease_s=60) for i in range(2)]
        assert {c.id for c in claimed if c is not None} == {queued.id, new.id}
        study = optuna.load_study(study_name=finished.study_name, storage=optuna_storage(db.url))
        study.tell(study.ask(), [0.9, 2.0, 30_000.0])
        assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    finally:
        optuna_storage(db.url).engine.dispose()
        db.dispose()


def _check_the_finished_study(url: str, study_name: str, job_id: str) -> None:
    study = optuna.load_study(study_name=study_name, storage=optuna_storage(url))
    assert study.metric_names == ["accuracy", "latency_ms@local", "size_bytes"]
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE,
                                optuna.study.StudyDirection.MINIMIZE,
                                optuna.study.StudyDirection.MINIMIZE]
    assert study.user_attrs[JOB_ID_ATTR] == job_id
    assert JobSpec.model_validate(study.user_attrs["edgetune:spec"]).name == "digits-nas"
    complete, pruned, failed = study.get_trials()
    assert [t.state for t in (complete, pruned, failed)] == [
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
    ]
    assert complete.values == [0.95, 1.25, 48_200.0]
    assert complete.params == {"depth": 2, "width": 16, "kernel_size": 3, "lr": 0.01}
    assert complete.user_attrs["latency@local"]["p90_ms"] == 1.5
    assert complete.user_attrs["artifact"]["format"] == "onnx"
    assert complete.system_attrs["constraints"] == [-3.75]  # NSGA-II's, for feasibility
    assert pruned.params["depth"] == 1 and pruned.user_attrs["pruned_at_epoch"] == 1
    assert "SIGKILL" in failed.user_attrs["error"]


def _ours(name: str | None, type_: str, _parent: object) -> bool:
    """migrations/env.py's filter: autogenerate compares our tables only, never Optuna's."""
    return type_ != "table" or (name or "").startswith(PREFIX)


def test_upgrading_revision_by_revision_gives_the_models_schema(
    empty_database_url: str,
) -> None:
    database_url = empty_database_url
    config = alembic_config(database_url)
    engine = make_engine(database_url)
    try:
        assert current_revision(engine) is None
        for revision in revisions_in_order():
            command.upgrade(config, revision)  # migrations/env.py opens its own engine
            assert current_revision(engine) == revision
        optuna_storage(database_url)  # Optuna's tables beside ours, as in service, to filter out
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "version_table": VERSION_TABLE, "include_name": _ours,
                "compare_type": True, "compare_server_default": True,
            })
            assert compare_metadata(context, Base.metadata) == []
    finally:
        optuna_storage(database_url).engine.dispose()
        engine.dispose()


def test_a_frozen_databases_jobs_upgrade_on_every_database(
    frozen_url: str, empty_database_url: str
) -> None:
    """The data migrations on PostgreSQL too: our rows of a frozen database, copied into a
    database at the same revision, read back after the upgrade to head."""
    database_url = empty_database_url
    command.upgrade(alembic_config(database_url), frozen_revision(Path(frozen_url)))
    source = make_engine(frozen_url)
    target = make_engine(database_url)
    try:
        with source.connect() as read, target.begin() as write:
            names = [n for n in sa.inspect(read).get_table_names()
                     if n.startswith(PREFIX) and n != VERSION_TABLE]
            for name in names:
                rows = read.execute(sa.select(sa.Table(name, sa.MetaData(), autoload_with=read)))
                table = sa.Table(name, sa.MetaData(), autoload_with=write)
                copied = [_utc(row._asdict()) for row in rows]
                if copied:  # an empty list would insert one row of defaults
                    write.execute(table.insert(), copied)
        db = open_database(database_url, migrate=False)
        try:
            upgrade(db.engine)
            assert current_revision(db.engine) == head_revision()
            listed, count = JobRepository(db).list()
            assert count == 3
            for job in listed:
                assert job.spec.name == job.name
                assert job.created_at.tzinfo is not None
        finally:
            db.dispose()
    finally:
        source.dispose()
        target.dispose()


def _utc(row: dict[str, Any]) -> dict[str, Any]:
    # SQLite keeps our UTC datetimes without their zone; PostgreSQL would read a naive one
    # in its session's time zone.
    return {k: v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v
            for k, v in row.items()}
