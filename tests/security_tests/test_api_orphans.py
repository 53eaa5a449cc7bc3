"""A server that died between a job's study and its row left the study behind for good; now a
starting server deletes such studies once they are still orphans after a grace period, and keeps
every study a job points at (issue 15, item 14e)."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from servers import start_server, stop_server

from edgetune.spec import JobSpec
from edgetune.storage import JobRepository, open_database
from edgetune.storage.optuna_storage import create_job_study, optuna_storage

pytestmark = pytest.mark.slow


def test_a_starting_server_reaps_studies_whose_job_never_appeared(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'edgetune.db'}"
    db = open_database(url)
    kept = JobRepository(db).create(JobSpec(name="kept"))
    # What a server that died after the study and before the job row leaves behind:
    create_job_study(url, "edgetune-orphan-deadbeef", "deadbeef-0000", JobSpec(name="orphan"))
    optuna.create_study(storage=optuna_storage(url), study_name="users-own-study")
    assert JobRepository(db).orphan_studies() == ["edgetune-orphan-deadbeef"]
    db.dispose()

    server = start_server(tmp_path, workers=0, env={"EDGETUNE_ORPHAN_STUDY_GRACE_S": "1"})
    try:
        deadline = time.monotonic() + 60
        names: set[str] = set()
        while time.monotonic() < deadline:
            names = {s.study_name for s in optuna.get_all_study_summaries(optuna_storage(url))}
            if "edgetune-orphan-deadbeef" not in names:
                break
            time.sleep(0.5)
        assert names == {kept.study_name, "users-own-study"}, server.log_tail()
        assert "its job was never stored" in server.log.read_text()
    finally:
        stop_server(server)
