"""`/jobs`: submit, list, read and cancel searches; their trials and their Pareto front."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from optuna.trial import FrozenTrial, TrialState

from edgetune.errors import InvalidSpecError, NotFoundError
from edgetune.schemas import (
    ErrorPublic,
    JobProgress,
    JobPublic,
    JobsPublic,
    ParetoPublic,
    TrialPublic,
    TrialsPublic,
)
from edgetune.search import validate_job_spec
from edgetune.search.front import rank_front, trial_metrics
from edgetune.spec import JobSpec
from edgetune.storage import Database, Job, optuna_storage
from edgetune.storage.trials import trial_state_counts

from ..deps import DatabaseDep, JobsDep

router = APIRouter(prefix="/jobs", tags=["jobs"])

_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic}}
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
Limit = Annotated[int, Query(ge=1, le=500)]


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=JobPublic,
    responses={422: {"model": ErrorPublic}},
)
def create_job(spec: JobSpec, jobs: JobsDep, db: DatabaseDep) -> JobPublic:
    """Validate a JobSpec and queue it; a worker picks it up."""
    validate_job_spec(spec)
    job = jobs.create(spec)
    return _public([job], db)[0]


@router.get("", response_model=JobsPublic)
def list_jobs(
    jobs: JobsDep,
    db: DatabaseDep,
    status: Annotated[
        str | None, Query(pattern="^(queued|running|succeeded|failed|cancelled)$")
    ] = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> JobsPublic:
    """Jobs, newest first."""
    rows, count = jobs.list(status=status, offset=offset, limit=limit)
    return JobsPublic(data=_public(rows, db), count=count)


@router.get("/{job_id}", response_model=JobPublic, responses=_ERRORS)
def get_job(job_id: str, jobs: JobsDep, db: DatabaseDep) -> JobPublic:
    return _public([jobs.get(job_id)], db)[0]


@router.post(
    "/{job_id}/cancel", response_model=JobPublic,
    responses={**_ERRORS, 409: {"model": ErrorPublic}},
)
def cancel_job(job_id: str, jobs: JobsDep, db: DatabaseDep) -> JobPublic:
    """Cancel a job: a queued one at once, a running one as soon as its worker sees it."""
    return _public([jobs.request_cancel(job_id)], db)[0]


@router.get("/{job_id}/trials", response_model=TrialsPublic, responses=_ERRORS)
def list_trials(
    job_id: str,
    jobs: JobsDep,
    db: DatabaseDep,
    state: Annotated[str | None, Query(pattern="^(running|waiting|complete|pruned|fail)$")] = None,
    offset: Offset = 0,
    limit: Limit = 100,
) -> TrialsPublic:
    """The job's trials by number."""
    job = jobs.get(job_id)
    trials = _trials(db, job)
    if state is not None:
        trials = [t for t in trials if t.state.name.lower() == state]
    spec = JobSpec.model_validate_json(job.spec)
    page = trials[offset : offset + limit]
    return TrialsPublic(data=[_trial_public(t, spec) for t in page], count=len(trials))


@router.get("/{job_id}/trials/{number}", response_model=TrialPublic, responses=_ERRORS)
def get_trial(job_id: str, number: int, jobs: JobsDep, db: DatabaseDep) -> TrialPublic:
    job = jobs.get(job_id)
    for t in _trials(db, job):
        if t.number == number:
            return _trial_public(t, JobSpec.model_validate_json(job.spec))
    raise NotFoundError(f"job {job_id!r} has no trial {number}")


@router.get("/{job_id}/pareto", response_model=ParetoPublic, responses=_ERRORS)
def get_pareto(
    job_id: str,
    jobs: JobsDep,
    db: DatabaseDep,
    objectives: Annotated[
        str | None,
        Query(max_length=1000, description="Comma-separated subset, e.g. accuracy,size_bytes."),
    ] = None,
    include_dominated: Annotated[
        bool, Query(description="Also return the dominated trials, with their rank.")
    ] = False,
) -> ParetoPublic:
    """Completed trials ranked by non-dominated sorting (feasible first), with crowding."""
    job = jobs.get(job_id)
    spec = JobSpec.model_validate_json(job.spec)
    subset = [o.strip() for o in objectives.split(",") if o.strip()] if objectives else None
    try:
        return rank_front(job.id, spec, _trials(db, job), objectives=subset,
                          include_dominated=include_dominated)
    except ValueError as e:
        raise InvalidSpecError("objectives", str(e)) from e


# --- views ---------------------------------------------------------------------------------
def _public(rows: Sequence[Job], db: Database) -> list[JobPublic]:
    counts = trial_state_counts(db, [j.study_name for j in rows])
    out = []
    for job in rows:
        spec = JobSpec.model_validate_json(job.spec)
        c = counts.get(job.study_name, {})
        progress = JobProgress(
            n_trials=spec.budget.n_trials,
            complete=c.get("COMPLETE", 0),
            pruned=c.get("PRUNED", 0),
            failed=c.get("FAIL", 0),
            running=c.get("RUNNING", 0),
        )
        out.append(JobPublic(
            id=job.id, name=job.name, status=job.status,  # type: ignore[arg-type]
            study_name=job.study_name, created_at=job.created_at, started_at=job.started_at,
            finished_at=job.finished_at, error=job.error, spec=spec, progress=progress,
        ))
    return out


def _trials(db: Database, job: Job) -> list[FrozenTrial]:
    storage = optuna_storage(db.url)
    study_id = storage.get_study_id_from_name(job.study_name)
    return storage.get_all_trials(study_id, deepcopy=False)


def _trial_public(t: FrozenTrial, spec: JobSpec) -> TrialPublic:
    values = (
        dict(zip(spec.metric_names, t.values, strict=True))
        if t.state == TrialState.COMPLETE and t.values is not None else None
    )
    duration = (
        (t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start else None
    )
    return TrialPublic(
        number=t.number,
        state=t.state.name.lower(),  # type: ignore[arg-type]
        params=t.params | t.user_attrs.get("fixed_params", {}),
        values=values,
        metrics=trial_metrics(t),
        intermediate_values=dict(t.intermediate_values),
        started_at=t.datetime_start,
        finished_at=t.datetime_complete,
        duration_s=duration,
        error=t.user_attrs.get("error"),
        user_attrs=t.user_attrs,
    )
