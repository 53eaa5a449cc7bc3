"""The one module that knows Optuna's tables and private names.

Everything edgetune does to a study beyond Optuna's public API goes through here: budget counts
in SQL, a new trial with its first heartbeat, a trial's parameters and its result each in one
transaction, failing the trials of dead workers, grid claims, an index of ours on Optuna's
`trials`, and reads of trials and values with Optuna's own decoding. Database driver errors
come out of every function once, as `StorageError`. Optuna is pinned to 5.1 (`optuna~=5.1`)
because of what this module relies on.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BindParameter,
    Engine,
    ScalarSelect,
    SQLColumnExpression,
    bindparam,
    column,
    func,
    literal,
    literal_column,
    select,
    table,
    text,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from edgetune.errors import StorageError
from edgetune.storage.locks import job_lock

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.trial import FrozenTrial, TrialState

    from edgetune.storage.db import Database

logger = logging.getLogger(__name__)

#: A failed trial carrying this user attribute failed because of the infrastructure (its worker
#: stopped, the job was cancelled), not because of its parameters: it does not use up budget.
INFRA_FAILURE_KEY = "edgetune:infra_failure"
#: The user attribute holding why a trial failed.
ERROR_ATTR = "error"
#: The user attribute that says what a trial of a one-shot job does (`search.one_shot`): its
#: evaluations ("eval") stay out of the job's Pareto front.
ONE_SHOT_ATTR = "one_shot"


@contextlib.contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Wrap a database driver's error (and Optuna's wrapping of one) once, as `StorageError`."""
    from optuna.exceptions import StorageInternalError

    try:
        yield
    except (SQLAlchemyError, StorageInternalError) as e:
        raise StorageError(f"{what}: database error: {e}") from e


# --- a study's ids and storage -----------------------------------------------------------------
def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def _rdb(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The study's RDBStorage under Optuna's cache, or None on another kind of storage."""
    from optuna.storages import RDBStorage
    from optuna.storages._cached_storage import _CachedStorage

    storage = study._storage
    if isinstance(storage, _CachedStorage):
        storage = storage._backend
    return storage if isinstance(storage, RDBStorage) else None


def _engine(study: optuna.Study) -> Engine:
    rdb = _rdb(study)
    if rdb is None:  # pragma: no cover - a job's study is always on the service's database
        raise TypeError(f"study {study.study_name!r} is not stored in a database")
    return rdb.engine


# --- budget ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialCounts:
    """How many trials of a study have ended and run: the raw counts a budget is made of."""

    counted: int  # finished trials that use budget (not infrastructure failures)
    succeeded: int  # of those, the ones that did not fail
    running: int


def trial_counts(study: optuna.Study) -> TrialCounts:
    """The counts in one SQL query, not through `study.get_trials`: Optuna's cached storage
    rebuilds every unfinished trial on each read (about 1 ms a trial), and this is read under
    the job's lock on every ask, so with 16 trials running each ask held up all the others'
    for 15 ms."""
    with storage_errors("counting the study's trials"), _engine(study).connect() as conn:
        rows = conn.execute(
            text("SELECT t.state, COUNT(*), COUNT(a.trial_id) FROM trials t "
                 "LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                 "AND a.key = :key AND a.value_json = 'true' "
                 "WHERE t.study_id = :study GROUP BY t.state"),
            {"key": INFRA_FAILURE_KEY, "study": study_id(study)},
        ).all()
    counts = {_state(state): (int(n), int(infra)) for state, n, infra in rows}
    complete, pruned = counts.get("COMPLETE", (0, 0))[0], counts.get("PRUNED", (0, 0))[0]
    failed, infra = counts.get("FAIL", (0, 0))
    return TrialCounts(counted=complete + pruned + failed - infra, succeeded=complete + pruned,
                       running=counts.get("RUNNING", (0, 0))[0])


# --- a trial's life ----------------------------------------------------------------------------
def create_trial(study: optuna.Study) -> int:
    """A new trial (or one enqueued) with its first heartbeat, as `Study.ask` makes it, but not
    sampled yet (`sampled_trial` does that): call it under the job's lock, which guards the
    slot, and sample after it."""
    rdb = _rdb(study)
    with storage_errors("creating a trial"):
        # Optuna's pop reads every unfinished trial (see `trial_counts`); enqueued trials are
        # rare, so look for one in SQL first.
        trial = study._pop_waiting_trial_id() if _has_waiting_trial(study) else None
        if trial is None:
            trial = study._storage.create_new_trial(study_id(study))
        if rdb is not None and rdb.get_heartbeat_interval() is not None:
            rdb.record_heartbeat(trial)
    return trial


def _has_waiting_trial(study: optuna.Study) -> bool:
    if _rdb(study) is None:
        return True
    with _engine(study).connect() as conn:
        return conn.execute(
            text("SELECT 1 FROM trials WHERE study_id = :study AND state = 'WAITING' LIMIT 1"),
            {"study": study_id(study)},
        ).first() is not None


def sampled_trial(study: optuna.Study, trial: int) -> optuna.Trial:
    """The trial, with the sampler's relative parameters drawn (the rest of `Study.ask`)."""
    import optuna

    study._thread_local.cached_all_trials = None  # as `Study.ask`: read the storage afresh
    with storage_errors("sampling a trial"):
        return optuna.Trial(study, trial)


def record_heartbeat(study: optuna.Study, trial: int) -> None:
    rdb = _rdb(study)
    if rdb is not None and rdb.get_heartbeat_interval() is not None:
        with storage_errors("recording a trial's heartbeat"):
            rdb.record_heartbeat(trial)


def set_user_attr(study: optuna.Study, trial: int, key: str, value: Any) -> None:
    with storage_errors(f"storing the trial's {key!r}"):
        study._storage.set_trial_user_attr(trial, key, value)


def uses_budget(t: FrozenTrial) -> bool:
    """Whether a finished trial uses up its job's budget (infrastructure failures do not)."""
    from optuna.trial import TrialState

    if t.state == TrialState.FAIL:
        return not t.user_attrs.get(INFRA_FAILURE_KEY, False)
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED)


def all_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial of the study, read afresh from the storage."""
    with storage_errors("reading the study's trials"):
        return study._storage.get_all_trials(study_id(study), deepcopy=False)


def fix_params(study: optuna.Study, trial: int, params: Mapping[str, Any]) -> None:
    """Make the trial run with `params` whatever the sampler says, as `Study.enqueue_trial`
    does (the parameters Optuna's `Trial` reads first)."""
    set_system_attr(study, trial, "fixed_params", dict(params))


def set_system_attr(study: optuna.Study, trial: int, key: str, value: Any) -> None:
    with storage_errors(f"storing the trial's {key!r}"):
        study._storage.set_trial_system_attr(trial, key, value)


def trial_state(study: optuna.Study, trial: int) -> TrialState:
    with storage_errors("reading a trial's state"):
        return study._storage.get_trial(trial).state


def trial_id_of_number(study: optuna.Study, number: int) -> int:
    """The storage id of the study's trial `number`; KeyError when it has none."""
    with storage_errors("looking up a trial"):
        return study._storage.get_trial_id_from_study_id_trial_number(study_id(study), number)


def running_trial_with_attr(study: optuna.Study, key: str, value: Any) -> int | None:
    """The first RUNNING trial whose system attribute `key` is `value`, in SQL (this runs under
    the job's lock; `study.get_trials` would rebuild every running trial)."""
    with storage_errors("looking up a running trial"), _engine(study).connect() as conn:
        found = conn.execute(
            text("SELECT t.trial_id FROM trials t JOIN trial_system_attributes a "
                 "ON a.trial_id = t.trial_id WHERE t.study_id = :study "
                 "AND t.state = 'RUNNING' AND a.key = :key AND a.value_json = :value "
                 "ORDER BY t.trial_id LIMIT 1"),
            {"study": study_id(study), "key": key, "value": json.dumps(value)},
        ).scalar()
    return None if found is None else int(found)


def finish_trial(
    study: optuna.Study, trial: int, state: TrialState, values: Sequence[float] | None = None,
    user_attrs: Mapping[str, Any] | None = None, *, after_trial: bool = True,
) -> TrialState:
    """Finish a running trial: its user attributes, its values and its state in one
    transaction, after the sampler's `after_trial` (as `Study.tell` does; a pruned trial takes
    its last intermediate value as Optuna gives it). Returns the state the trial ended in: a
    trial already finished (another worker failed it as dead) is left as it is."""
    import math

    from optuna import pruners
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    attrs = dict(user_attrs or {})
    with storage_errors("telling a trial's result"):
        frozen = study._storage.get_trial(trial)
        if frozen.state.is_finished():
            logger.warning("trial %d was already %s", frozen.number, frozen.state.name)
            return frozen.state
        if values is not None and len(values) != len(study.directions):
            raise ValueError(f"the study has {len(study.directions)} objectives, but "
                             f"{len(values)} values were told")
        if state == TrialState.PRUNED and values is None and frozen.last_step is not None:
            last = frozen.intermediate_values[frozen.last_step]
            if len(study.directions) == 1 and not math.isnan(last):
                values = [last]
        values = None if values is None else [float(v) for v in values]
        # The sampler sees the attributes about to be stored (constraints are read from them).
        frozen = copy.deepcopy(frozen)
        frozen.user_attrs = {**frozen.user_attrs, **attrs}
        study._thread_local.cached_all_trials = None
        try:
            if after_trial:
                study.sampler.after_trial(pruners._filter_study(study, frozen), frozen, state,
                                          values)
        finally:
            try:
                _write_finish(study, trial, state, values, attrs)
            except UpdateFinishedTrialError:
                current = study._storage.get_trial(trial).state
                logger.warning("trial %d was already %s", frozen.number, current.name)
                return current
    return state


def _write_finish(
    study: optuna.Study, trial: int, state: TrialState, values: list[float] | None,
    attrs: dict[str, Any],
) -> None:
    rdb = _rdb(study)
    if rdb is None:  # another kind of storage: Optuna's calls, one write each
        for key, value in attrs.items():
            study._storage.set_trial_user_attr(trial, key, value)
        study._storage.set_trial_state_values(trial, state, values)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(rdb.scoped_session) as session:
        row = models.TrialModel.find_or_raise_by_id(trial, session, for_update=True)
        rdb.check_trial_is_updatable(trial, row.state)
        for key, value in attrs.items():
            rdb._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial,
                                               key, value)
        for objective, value in enumerate(values or ()):
            rdb._set_trial_value_without_commit(session, row, objective, value)
        row.state = state
        row.datetime_complete = datetime.now()


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail the trials whose worker died, as infrastructure failures (so others run again):
    those whose heartbeat went stale, and those with none at all. Call it under the job's lock:
    a worker holds that lock from asking a trial to its first heartbeat, so a running trial
    without one seen under the lock was asked by a worker that died in between."""
    from optuna.trial import TrialState

    rdb = _rdb(study)
    if rdb is None or rdb.get_heartbeat_interval() is None:
        return []
    with storage_errors("failing dead trials"):
        with rdb.engine.connect() as conn:
            orphans = conn.execute(
                text("SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h "
                     "ON h.trial_id = t.trial_id WHERE t.study_id = :study AND "
                     "t.state = 'RUNNING' AND h.trial_id IS NULL"),
                {"study": study_id(study)},
            ).scalars().all()
        dead = {**{int(i): "its worker died" for i in orphans},
                **{i: "its worker stopped answering"
                   for i in rdb._get_stale_trial_ids(study_id(study))}}
        failed = []
        for trial, reason in dead.items():
            attrs = {ERROR_ATTR: reason, INFRA_FAILURE_KEY: True}
            if finish_trial(study, trial, TrialState.FAIL, None, attrs,
                            after_trial=False) == TrialState.FAIL:
                logger.warning("trial id %d of %s: %s; marked failed, to run again", trial,
                               study.study_name, reason)
                failed.append(trial)
    return failed


def fail_running_trials(study: optuna.Study, reason: str) -> list[int]:
    """Fail every RUNNING trial of the study as an infrastructure failure: the caller holds
    the job's lease, so they were left by a worker that died."""
    from optuna.trial import TrialState

    with storage_errors("failing leftover trials"):
        running = study._storage.get_all_trials(study_id(study), deepcopy=False,
                                                states=(TrialState.RUNNING,))
        for t in running:
            finish_trial(study, t._trial_id, TrialState.FAIL, None,
                         {ERROR_ATTR: reason, INFRA_FAILURE_KEY: True}, after_trial=False)
            logger.warning("trial %d of %s was left running; marked failed", t.number,
                           study.study_name)
    return [t._trial_id for t in running]


# --- grid points -------------------------------------------------------------------------------
_claim_lock = threading.Lock()


def claim_point(
    study: optuna.Study, trial: int, key: str, choose: Callable[[set[int]], int]
) -> int:
    """Store `choose(taken)` as the trial's system attribute `key`, atomically across threads
    and processes: under a lock on the study, `taken` holds the values of `key` on every trial
    that holds or used up its point (running, waiting, complete, pruned, or failed on its
    parameters; an infrastructure failure frees its point). Never call it under the job's
    lock: on SQLite both are the database's one lock file."""
    from optuna.trial import TrialState

    rdb = _rdb(study)
    with storage_errors("claiming a grid point"):
        if rdb is None:
            with _claim_lock:
                taken = {
                    int(t.system_attrs[key])
                    for t in study._storage.get_all_trials(study_id(study), deepcopy=False)
                    if key in t.system_attrs and t._trial_id != trial
                    and (t.state != TrialState.FAIL or not t.user_attrs.get(INFRA_FAILURE_KEY))
                }
                point = choose(taken)
                study._storage.set_trial_system_attr(trial, key, point)
            return point
        with job_lock(rdb.engine, f"optuna-study:{study_id(study)}"):
            with rdb.engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT a.value_json FROM trials t JOIN trial_system_attributes a "
                         "ON a.trial_id = t.trial_id AND a.key = :key "
                         "LEFT JOIN trial_user_attributes i ON i.trial_id = t.trial_id "
                         "AND i.key = :infra AND i.value_json = 'true' "
                         "WHERE t.study_id = :study AND t.trial_id <> :trial "
                         "AND NOT (t.state = 'FAIL' AND i.trial_id IS NOT NULL)"),
                    {"key": key, "infra": INFRA_FAILURE_KEY, "study": study_id(study),
                     "trial": trial},
                ).scalars().all()
            point = choose({int(json.loads(v)) for v in rows})
            study._storage.set_trial_system_attr(trial, key, point)
    return point


# --- a trial's parameters in one write ---------------------------------------------------------
@contextlib.contextmanager
def params_in_one_write(trial: optuna.Trial) -> Iterator[None]:
    """Sample `trial` in the block, and store the parameters it suggests in one transaction at
    the end, rather than one each: Optuna writes every `suggest_*` on its own (a trial lookup,
    an insert and a commit), which for a trial of 8 parameters on PostgreSQL is most of an ask.
    The rows (`TrialParamModel`), the checks (the trial still running, each distribution
    compatible with the study's) and the cache of the study's distributions are those of
    `_CachedStorage.set_trial_param` and `RDBStorage._set_trial_param_without_commit`; only the
    trial is looked up once and committed once. Nothing is stored if the block raises. A
    parameter the trial already has (written meanwhile by another process asking the same
    trial) is skipped, as Optuna skips it, and the others are stored. A trial on another kind
    of storage is written as usual."""
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
    with storage_errors("storing a trial's parameters"):
        buffer.write(trial._trial_id)


class _ParamBuffer:
    """Stands in for a trial's storage while it is sampled: keeps `set_trial_param` calls and
    hands every other call to the storage."""

    def __init__(self, cached: Any) -> None:
        self._cached = cached
        self.params: list[tuple[str, float, BaseDistribution]] = []

    def set_trial_param(self, trial_id: int, name: str, value: float,
                        distribution: BaseDistribution) -> None:
        self.params.append((name, value, distribution))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cached, name)

    def write(self, trial_id: int) -> None:
        if not self.params:
            return
        try:
            self._write_all(trial_id)
        except IntegrityError:
            # A parameter was stored meanwhile (the same trial asked again elsewhere): store
            # the others one by one, as Optuna would, and skip the ones already there.
            self._write_each(trial_id)

    def _write_all(self, trial_id: int) -> None:
        from optuna.distributions import check_distribution_compatibility, distribution_to_json
        from optuna.storages._rdb import models

        cached, backend = self._cached, self._cached._backend
        with cached._lock:  # as `_CachedStorage.set_trial_param` holds it, and looks up
            study, _ = cached._trial_id_to_study_id_and_number[trial_id]
            known = cached._studies[study].param_distribution
            session = backend.scoped_session()
            try:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
                backend.check_trial_is_updatable(trial_id, trial.state)
                stored = {p.param_name for p in trial.params}
                for name, value, distribution in self.params:
                    if name in stored:
                        continue
                    stored.add(name)
                    previous = known.get(name)
                    if previous is None:  # the study's first use of it in this process
                        backend._set_trial_param_without_commit(
                            session, trial_id, name, value, distribution)
                        continue
                    check_distribution_compatibility(previous, distribution)
                    session.add(models.TrialParamModel(
                        trial_id=trial_id, param_name=name, param_value=value,
                        distribution_json=distribution_to_json(distribution)))
                session.commit()
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()
            for name, _, distribution in self.params:
                known.setdefault(name, distribution)

    def _write_each(self, trial_id: int) -> None:
        for name, value, distribution in self.params:
            try:
                self._cached.set_trial_param(trial_id, name, value, distribution)
            except IntegrityError:  # pragma: no cover - Optuna ignores these itself
                logger.debug("trial id %d already has %r", trial_id, name)


# --- schema ------------------------------------------------------------------------------------
def index_trials_by_number(engine: Engine) -> None:
    """Index Optuna's `trials` by (study, number), which Optuna leaves to its study index alone:
    a page of a study's trials by number then reads that page, not the whole study
    (`trials_page`). Idempotent; the caller holds the migration lock."""
    with storage_errors("indexing Optuna's trials"), engine.begin() as conn:
        conn.execute(text("CREATE INDEX IF NOT EXISTS edgetune_ix_trials_study_number "
                          "ON trials (study_id, number)"))


# --- reads -------------------------------------------------------------------------------------
def tenant_running_trials_query(tenant: SQLColumnExpression[str]) -> ScalarSelect[int]:
    """Trials of `tenant` that workers run now, on any machine, as a scalar subquery: RUNNING
    trials of its running jobs, except ask/tell ones (their clients train, not our workers).
    `tenant` may be a column of an enclosing query over jobs (the query correlates to it)."""
    from sqlalchemy.orm import aliased

    from edgetune.storage.models import Job, JobStatus, Runner

    trials = table("trials", column("study_id"), column("state"))
    studies = table("studies", column("study_id"), column("study_name"))
    job = aliased(Job)
    return (
        select(func.count())
        .select_from(trials.join(studies, studies.c.study_id == trials.c.study_id)
                     .join(job, job.study_name == studies.c.study_name))
        # A literal, not a bound string: on PostgreSQL the column is Optuna's enum type.
        .where(trials.c.state == literal_column("'RUNNING'"), job.tenant == tenant,
               job.status == JobStatus.RUNNING.value, job.runner != Runner.ASK_TELL.value)
        .scalar_subquery()
    )


def tenant_running_trials(engine: Engine, tenant: str) -> int:
    """The number `tenant_running_trials_query` counts, for one tenant."""
    with storage_errors("counting the tenant's running trials"), engine.connect() as conn:
        return int(conn.execute(select(tenant_running_trials_query(literal(tenant)))).scalar_one())


def orphan_study_names(engine: Engine) -> list[str]:
    """Names of the studies made for a job (they carry its id) whose job row was never
    stored: a server that stopped between the two steps of a submission leaves one."""
    from edgetune.storage.models import Job
    from edgetune.storage.optuna_storage import JOB_ID_ATTR

    query = text(
        "SELECT s.study_name FROM studies s JOIN study_user_attributes a "
        "ON a.study_id = s.study_id AND a.key = :key "
        f"WHERE s.study_name NOT IN (SELECT study_name FROM {Job.__tablename__})"
    )
    with storage_errors("finding orphan studies"), engine.connect() as conn:
        return sorted(conn.execute(query, {"key": JOB_ID_ATTR}).scalars())


def artifact_named_by_a_trial(engine: Engine, sha256: str) -> bool:
    """Whether any trial records `sha256` as its exported artifact (the `artifact` user
    attribute, {"sha256": ...})."""
    with storage_errors("looking up trial artifacts"), engine.connect() as conn:
        return conn.execute(
            text("SELECT 1 FROM trial_user_attributes WHERE key = 'artifact' "
                 "AND value_json LIKE :pattern LIMIT 1"),
            {"pattern": f"%{sha256}%"},
        ).first() is not None


def trial_state_counts(db: Database, study_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """{study name: {"COMPLETE": n, "RUNNING": n, ..., "FAIL_INFRA": n}} in two queries.

    "FAIL" counts trials that failed by their parameters; "FAIL_INFRA" those failed because
    their worker stopped or died, which are run again and do not use budget.
    """
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    if not study_names:
        return counts
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
    with storage_errors("counting trials"), db.engine.connect() as conn:
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


#: Leaves out the one-shot evaluations (`ONE_SHOT_ATTR` "eval") of `completed_trials`.
_NOT_ONE_SHOT_EVAL = (
    "AND NOT EXISTS (SELECT 1 FROM trial_user_attributes a WHERE a.trial_id = t.trial_id "
    f"AND a.key = '{ONE_SHOT_ATTR}' AND a.value_json = '\"eval\"') "
)


def completed_trials(
    db: Database, study_name: str, *, one_shot_evals: bool = True
) -> list[CompletedTrial]:
    """Every COMPLETE trial of the study with its values, in one query, ordered by trial id;
    values decoded as Optuna decodes them (±inf are stored as NULL with their `value_type`).
    `one_shot_evals=False` leaves out the subnets a one-shot job evaluated with inherited
    weights.

    Building FrozenTrials through Optuna's storage costs about a millisecond per trial; the
    Pareto view of a job with 10,000 trials needs only these columns.
    """
    with storage_errors("reading completed trials"), db.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT t.trial_id, t.number, t.datetime_complete, v.value, v.value_type "
                "FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "JOIN trial_values v ON v.trial_id = t.trial_id "
                "WHERE s.study_name = :name AND t.state = 'COMPLETE' "
                + ("" if one_shot_evals else _NOT_ONE_SHOT_EVAL)
                + "ORDER BY t.trial_id, v.objective"
            ),
            {"name": study_name},
        ).all()
    out: list[CompletedTrial] = []
    current: list[float] = []
    for i, (trial, number, completed, value, value_type) in enumerate(rows):
        current.append(_stored_value(value, value_type))
        if i + 1 == len(rows) or rows[i + 1][0] != trial:
            out.append(CompletedTrial(trial, int(number), _utc(completed), tuple(current)))
            current = []
    return out


def _stored_value(value: float | None, value_type: object) -> float:
    """A `trial_values` row's value as Optuna reads it (`TrialValueModel.stored_repr_to_value`)."""
    from optuna.storages._rdb.models import TrialValueModel

    kind = TrialValueModel.TrialValueType[str(value_type).rsplit(".", 1)[-1].upper()]
    return TrialValueModel.stored_repr_to_value(
        None if value is None else float(value), kind)


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
    with storage_errors("reading trial attributes"), db.engine.connect() as conn:
        for trial, key, value_json in conn.execute(text(query).bindparams(*binds), params):
            out[trial][key] = json.loads(value_json)
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
    with storage_errors("reading trial parameters"), db.engine.connect() as conn:
        for trial, name, value, dist_json in conn.execute(query, {"ids": list(trial_ids)}):
            dist = distributions.get(dist_json)
            if dist is None:
                dist = distributions[dist_json] = json_to_distribution(dist_json)
            out[trial][name] = dist.to_external_repr(value)
    return out


def count_completed(db: Database, study_name: str, *, one_shot_evals: bool = True) -> int:
    """How many trials of the study are COMPLETE; they never leave that state."""
    with storage_errors("counting completed trials"), db.engine.connect() as conn:
        return int(conn.execute(
            text(
                "SELECT COUNT(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = :name AND t.state = 'COMPLETE' "
                + ("" if one_shot_evals else _NOT_ONE_SHOT_EVAL)
            ),
            {"name": study_name},
        ).scalar_one())


def finished_trials(db: Database, study_name: str) -> list[tuple[int, int, str]]:
    """(trial id, number, state) of every trial that has ended: COMPLETE, PRUNED or FAIL."""
    with storage_errors("reading finished trials"), db.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT t.trial_id, t.number, t.state FROM trials t "
                "JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = :name "
                "AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL') ORDER BY t.trial_id"
            ),
            {"name": study_name},
        ).all()
    return [(int(i), int(n), _state(state)) for i, n, state in rows]


def trials_page(
    url: str, study_name: str, *, state: str | None = None, offset: int = 0, limit: int = 100,
) -> tuple[list[FrozenTrial], int]:
    """One page of the study's trials by number (only those in `state`, e.g. "complete"), built
    by Optuna, and how many there are in all: the page is chosen in SQL, so the cost follows the
    page, not the study. KeyError when the study does not exist."""
    from edgetune.storage.optuna_storage import optuna_storage

    storage = optuna_storage(url)
    where = "study_id = :study" + (" AND state = :state" if state is not None else "")
    with storage_errors("reading trials"):
        study = storage.get_study_id_from_name(study_name)
        args: dict[str, Any] = {"study": study, "state": (state or "").upper()}
        with storage.engine.connect() as conn:
            count = int(conn.execute(text(f"SELECT COUNT(*) FROM trials WHERE {where}"),
                                     args).scalar_one())
            ids = [int(i) for i in conn.execute(
                text(f"SELECT trial_id FROM trials WHERE {where} ORDER BY number "
                     "LIMIT :limit OFFSET :offset"),
                {**args, "limit": limit, "offset": offset},
            ).scalars()]
        if not ids:
            return [], count
        # Optuna's own rows and builder, as `RDBStorage._get_trials` uses them, for exactly
        # these ids (its "these ids, or any newer than" filter made PostgreSQL scan the study).
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from sqlalchemy.orm import selectinload

        with _create_scoped_session(storage.scoped_session) as session:
            rows = (
                session.query(models.TrialModel)
                .options(selectinload(models.TrialModel.params),
                         selectinload(models.TrialModel.values),
                         selectinload(models.TrialModel.user_attributes),
                         selectinload(models.TrialModel.system_attributes),
                         selectinload(models.TrialModel.intermediate_values))
                .filter(models.TrialModel.trial_id.in_(ids))
                .all()
            )
            trials = [storage._build_frozen_trial_from_trial_model(row) for row in rows]
    return sorted((t for t in trials if t._trial_id in ids), key=lambda t: t.number), count


def trial_of_study(url: str, study_name: str, number: int) -> FrozenTrial:
    """The study's trial `number`; KeyError naming what is missing when the study or the trial
    does not exist."""
    from edgetune.storage.optuna_storage import optuna_storage

    storage = optuna_storage(url)
    with storage_errors("reading a trial"):
        study = storage.get_study_id_from_name(study_name)
        return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study, number))


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


def frozen_trial(study: optuna.Study, trial: int) -> FrozenTrial:
    """The trial as Optuna's storage holds it now."""
    with storage_errors("reading a trial"):
        return study._storage.get_trial(trial)
