"""The PostgreSQL connection pool is sized by `EDGETUNE_DB_POOL_SIZE` and
`EDGETUNE_DB_MAX_OVERFLOW`, for edgetune's engines and Optuna's alike."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from edgetune.settings import Settings
from edgetune.storage.db import engine_kwargs, make_engine
from edgetune.storage.optuna_storage import optuna_storage


def test_the_default_pool_is_five_plus_ten() -> None:
    kwargs = engine_kwargs("postgresql+psycopg://postgres@127.0.0.1:5432/test")  # no connection
    assert (kwargs["pool_size"], kwargs["max_overflow"]) == (5, 10)
    assert "pool_size" not in engine_kwargs("sqlite:///x.db")  # SQLite opens a file, not a pool


def test_the_environment_sizes_every_engine(monkeypatch: pytest.MonkeyPatch,
                                            postgres_url: str) -> None:
    monkeypatch.setenv("EDGETUNE_DB_POOL_SIZE", "12")
    monkeypatch.setenv("EDGETUNE_DB_MAX_OVERFLOW", "3")
    engine = make_engine(postgres_url)
    try:
        assert isinstance(engine.pool, sa.pool.QueuePool)
        assert engine.pool.size() == 12 and engine.pool._max_overflow == 3
    finally:
        engine.dispose()
    storage = optuna_storage(postgres_url)
    try:
        assert storage.engine.pool.size() == 12
    finally:
        storage.engine.dispose()
    assert Settings().db_pool_size == 12  # the server's settings say the same


def test_a_pool_of_none_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETUNE_DB_POOL_SIZE", "0")
    with pytest.raises(ValidationError, match=r"db_pool_size[\s\S]*greater than or equal to 1"):
        Settings()
