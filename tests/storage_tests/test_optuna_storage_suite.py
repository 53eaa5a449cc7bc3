"""Optuna's own storage suite (`optuna.testing.pytest_storages.StorageTestCase`) against the
storage every job uses (`optuna_storage`), on SQLite and PostgreSQL databases migrated by the
service: Optuna's tables beside ours, at the schema `open_database` brings them to. CI runs
this directory again with the newest Optuna 5.x (.ci/run)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from optuna.storages import RDBStorage
from optuna.testing.pytest_storages import StorageTestCase

from edgetune.storage.optuna_storage import optuna_storage


class TestOptunaStorageSuite(StorageTestCase):
    # On PostgreSQL each of the suite's tests creates a database (a minute in all on 2 busy
    # cores): that half runs with the slow tests.
    @pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
    def storage(self, request: pytest.FixtureRequest) -> Iterator[RDBStorage]:
        if request.param == "sqlite":
            url = f"sqlite:///{request.getfixturevalue('fresh_data_dir') / 'edgetune.db'}"
        else:
            url = request.getfixturevalue("migrated_postgres_url")
        storage = optuna_storage(url)
        yield storage
        storage.engine.dispose()
