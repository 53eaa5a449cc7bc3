"""Dependencies of the routes, as typed aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security

from edgetune.api.auth import authenticate
from edgetune.search.front import FrontView
from edgetune.settings import Settings
from edgetune.storage import Database, JobRepository, Principal, Scope


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_jobs(request: Request) -> JobRepository:
    return JobRepository(get_db(request))


def get_front(request: Request) -> FrontView:
    front: FrontView = request.app.state.front
    return front


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_db)]
JobsDep = Annotated[JobRepository, Depends(get_jobs)]
FrontDep = Annotated[FrontView, Depends(get_front)]

#: The caller of a route that runs searches (jobs, trials, ask/tell, ad-hoc probes).
UserDep = Annotated[Principal, Security(authenticate, scopes=[Scope.USER, Scope.ADMIN])]
#: The caller of a route that only device agents use (register, heartbeat, lease, report).
AgentDep = Annotated[Principal, Security(authenticate, scopes=[Scope.AGENT, Scope.ADMIN])]
#: The caller of a read that users and agents both make (devices, probes, artifacts).
ReaderDep = Annotated[
    Principal, Security(authenticate, scopes=[Scope.USER, Scope.AGENT, Scope.ADMIN])
]
#: The caller of a route that manages tokens.
AdminDep = Annotated[Principal, Security(authenticate, scopes=[Scope.ADMIN])]
