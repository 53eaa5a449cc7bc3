"""The Optuna storage on the service's own database URL, and each job's study."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from edgetune.storage.db import engine_kwargs, normalize_url

if TYPE_CHECKING:
    import optuna

    from edgetune.spec import JobSpec

JOB_ID_ATTR = "edgetune:job_id"


@functools.lru_cache(maxsize=8)
def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    """One RDBStorage per URL and process; Optuna creates or upgrades its own tables."""
    import optuna

    url = normalize_url(url)
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))


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
