"""`/health`: liveness, with a round trip to the database."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from edgetune import __version__
from edgetune.schemas import HealthPublic

from ..deps import DatabaseDep

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
def health(db: DatabaseDep) -> HealthPublic:
    with db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return HealthPublic(status="ok", version=__version__, database=db.engine.dialect.name)
