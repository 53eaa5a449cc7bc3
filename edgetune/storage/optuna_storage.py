"""The Optuna storage on the service's own database URL, and each job's study."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from edgetune.storage.db import engine_kwargs, normalize_url
from edgetune.storage.study_store import params_in_one_write

if TYPE_CHECKING:
    import optuna

    from edgetune.spec import JobSpec

__all__ = ["JOB_ID_ATTR", "create_job_study", "delete_study", "optuna_storage",
           "params_in_one_write", "upgrade_optuna_tables"]

JOB_ID_ATTR = "edgetune:job_id"


@functools.lru_cache(maxsize=8)
def optuna_storage(url: str, *, heartbeat_s: int | None = None) -> optuna.storages.RDBStorage:
    """One RDBStorage per URL (and heartbeat) and process; `open_database` has brought Optuna's
    tables to this optuna's schema first (`upgrade_optuna_tables`). With `heartbeat_s`, a
    worker keeps its running trials alive with `record_heartbeat`, and those silent for 4
    heartbeats count as stale (their worker died)."""
    import warnings

    import optuna

    url = normalize_url(url)
    if heartbeat_s is None:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
    with warnings.catch_warnings():  # the heartbeat is experimental in Optuna, stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs(url), heartbeat_interval=heartbeat_s,
            grace_period=4 * heartbeat_s,
        )


def upgrade_optuna_tables(url: str) -> None:
    """Bring Optuna's own tables to the installed optuna's schema (`optuna storage upgrade`);
    refuse tables that a newer optuna wrote, which this one would misread."""
    import optuna

    from edgetune.errors import StorageError

    url = normalize_url(url)
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url),
                                         skip_compatibility_check=True)
    try:
        current, head = storage.get_current_version(), storage.get_head_version()
        if current == head:
            return
        if current not in storage.get_all_versions():
            raise StorageError(
                f"the database's Optuna tables are at schema {current!r}, newer than optuna "
                f"{optuna.__version__} knows (newest: {head!r}); upgrade optuna"
            )
        storage.upgrade()
    finally:
        storage.engine.dispose()


def create_job_study(url: str, study_name: str, job_id: str, spec: JobSpec) -> None:
    """Create the job's study with its directions and metric names, for the dashboard too."""
    import warnings

    import optuna

    study = optuna.create_study(
        storage=optuna_storage(url),
        study_name=study_name,
        directions=list(spec.directions),
        load_if_exists=True,
    )
    with warnings.catch_warnings():  # experimental in Optuna since 3.2, stable in practice
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(spec.metric_names)
    study.set_user_attr(JOB_ID_ATTR, job_id)
    study.set_user_attr("edgetune:spec", spec.model_dump(mode="json"))


def delete_study(url: str, study_name: str) -> None:
    """Delete a study no job points at (one made for a submission that lost a race)."""
    import optuna

    optuna.delete_study(study_name=study_name, storage=optuna_storage(url))
