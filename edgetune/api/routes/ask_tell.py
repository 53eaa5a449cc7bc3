"""`/jobs/{id}/trials:ask`, `:report` and `:tell`: trials that clients run themselves."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from edgetune.schemas import (
    AskCreate,
    AskedTrialPublic,
    ErrorPublic,
    ReportCreate,
    ReportPublic,
    TellCreate,
    TrialPublic,
)
from edgetune.search.ask_tell import AskTellStudies

from ..deps import DatabaseDep, JobsDep, UserDep
from .jobs import _trial, _trial_public

router = APIRouter(prefix="/jobs", tags=["ask-tell"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorPublic}, 409: {"model": ErrorPublic}, 422: {"model": ErrorPublic},
}
Number = Annotated[int, Path(ge=0, le=10_000_000)]


def get_ask_tell(request: Request) -> AskTellStudies:
    studies: AskTellStudies = request.app.state.ask_tell
    return studies


AskTellDep = Annotated[AskTellStudies, Depends(get_ask_tell)]


@router.post("/{job_id}/trials:ask", response_model=AskedTrialPublic, responses=_ERRORS)
def ask(
    job_id: str, body: AskCreate, jobs: JobsDep, ask_tell: AskTellDep, caller: UserDep
) -> AskedTrialPublic:
    """Parameters for the client to train with: its unfinished trial if it has one, else a
    new trial (409 when the job has ended, spent its budget or runs its parallelism)."""
    asked = ask_tell.ask(jobs.get(job_id, tenant=caller.tenant), body.client_id)
    return AskedTrialPublic(job_id=job_id, number=asked.number, params=asked.params,
                            resumed=asked.resumed)


@router.post("/{job_id}/trials/{number}:report", response_model=ReportPublic, responses=_ERRORS)
def report(
    job_id: str, number: Number, body: ReportCreate, jobs: JobsDep, ask_tell: AskTellDep,
    caller: UserDep,
) -> ReportPublic:
    """An intermediate result of a running trial; answers whether the job's pruner stops it.
    Every report is also the trial's heartbeat."""
    stop = ask_tell.report(jobs.get(job_id, tenant=caller.tenant), number, body.step, body.values)
    return ReportPublic(should_stop=stop)


@router.post("/{job_id}/trials/{number}:tell", response_model=TrialPublic, responses=_ERRORS)
def tell(
    job_id: str, number: Number, body: TellCreate, jobs: JobsDep, db: DatabaseDep,
    ask_tell: AskTellDep, caller: UserDep,
) -> TrialPublic:
    """Finish a trial: its objective values, or failed or pruned. Telling it again changes
    nothing; the job ends once its budget is spent."""
    job = jobs.get(job_id, tenant=caller.tenant)
    ask_tell.tell(job, number, body.state, body.values, body.metrics, body.error)
    return _trial_public(_trial(db, job, number), job.spec)
