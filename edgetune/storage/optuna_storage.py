"""The Optuna storage on the service's own database URL, and each job's study."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from edgetune.storage.db import engine_kwargs, normalize_url

if TYPE_CHECKING:
    import optuna

    from edgetune.spec import JobSpec

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


@contextlib.contextmanager
def params_in_one_write(trial: optuna.Trial) -> Iterator[None]:
    """Sample `trial` in the block, and store the parameters it suggests in one transaction
    at the end, rather than one each: Optuna writes every `suggest_*` on its own (a trial
    lookup, an insert and a commit), which for a trial of 8 parameters on PostgreSQL is
    most of an ask. The rows (`TrialParamModel`), the checks (the trial still running, each
    distribution compatible with the study's) and the cache of the study's distributions are
    those of `_CachedStorage.set_trial_param` and `RDBStorage._set_trial_param_without_commit`;
    only the trial is looked up once and committed once. Nothing is stored if the block
    raises. A trial on another kind of storage is written as usual."""
    from optuna.storages import RDBStorage
    from optuna.storages._cached_storage import _CachedStorage

    cached = getattr(trial, "storage", None)  # a FixedTrial has none
    if not (isinstance(cached, _CachedStorage) and isinstance(cached._backend, RDBStorage)):
        yield
        return
    buffer = _ParamBuffer(cached)
    trial.storage = buffer  # type: ignore[assignment]  # what `Trial._suggest` writes through
    try:
        yield
    finally:
        trial.storage = cached
    buffer.write(trial._trial_id)


class _ParamBuffer:
    """Stands in for a trial's storage while it is sampled: keeps `set_trial_param` calls and
    hands every other call to the storage."""

    def __init__(self, cached: Any) -> None:
        self._cached = cached
        self.params: list[tuple[str, float, Any]] = []

    def set_trial_param(self, trial_id: int, name: str, value: float, distribution: Any,
                        ) -> None:
        self.params.append((name, value, distribution))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cached, name)

    def write(self, trial_id: int) -> None:
        if not self.params:
            return
        from optuna.distributions import check_distribution_compatibility, distribution_to_json
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        cached, backend = self._cached, self._cached._backend
        with cached._lock:  # as `_CachedStorage.set_trial_param` holds it, and looks up
            study_id, _ = cached._trial_id_to_study_id_and_number[trial_id]
            known = cached._studies[study_id].param_distribution
            with _create_scoped_session(backend.scoped_session, True) as session:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
                backend.check_trial_is_updatable(trial_id, trial.state)
                for name, value, distribution in self.params:
                    previous = known.get(name)
                    if previous is None:  # the study's first use of it in this process
                        backend._set_trial_param_without_commit(
                            session, trial_id, name, value, distribution)
                        continue
                    check_distribution_compatibility(previous, distribution)
                    session.add(models.TrialParamModel(
                        trial_id=trial_id, param_name=name, param_value=value,
                        distribution_json=distribution_to_json(distribution)))
            for name, _, distribution in self.params:
                known.setdefault(name, distribution)
