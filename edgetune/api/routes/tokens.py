"""`/tokens`: an admin creates, lists and revokes the API tokens of its tenant. (A new tenant's
first token comes from `edgetune token create`, on the database itself.)"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from edgetune.errors import NotFoundError
from edgetune.schemas import ErrorPublic, TokenCreate, TokenCreated, TokenPublic, TokensPublic
from edgetune.storage import TokenRepository

from ..deps import AdminDep, DatabaseDep

router = APIRouter(prefix="/tokens", tags=["tokens"])

_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic}}


@router.post("", response_model=TokenCreated, status_code=status.HTTP_201_CREATED,
             responses={422: {"model": ErrorPublic}})
def create_token(body: TokenCreate, db: DatabaseDep, caller: AdminDep) -> TokenCreated:
    """A new token of the caller's tenant; its secret is in this answer only."""
    row, secret = TokenRepository(db).create(tenant=caller.tenant, scope=body.scope,
                                             name=body.name)
    return TokenCreated.model_validate({**_fields(row), "token": secret})


@router.get("", response_model=TokensPublic)
def list_tokens(db: DatabaseDep, caller: AdminDep) -> TokensPublic:
    """The tenant's tokens, oldest first, revoked ones too; never their secrets."""
    rows = TokenRepository(db).list(tenant=caller.tenant)
    return TokensPublic(data=[TokenPublic.model_validate(_fields(r)) for r in rows],
                        count=len(rows))


@router.delete("/{token_id}", response_model=TokenPublic, responses=_ERRORS)
def revoke_token(token_id: str, db: DatabaseDep, caller: AdminDep) -> TokenPublic:
    """Revoke a token of the tenant: within seconds no API process accepts it."""
    tokens = TokenRepository(db)
    if not any(r.id == token_id for r in tokens.list(tenant=caller.tenant)):
        raise NotFoundError(f"token {token_id!r} not found")
    return TokenPublic.model_validate(_fields(tokens.revoke(token_id)))


def _fields(row: Any) -> dict[str, Any]:
    return {"id": row.id, "tenant": row.tenant, "scope": row.scope, "name": row.name,
            "created_at": row.created_at, "revoked_at": row.revoked_at}
