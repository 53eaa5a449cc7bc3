"""API tokens: created once (the secret is shown then and never again), stored as a sha256,
checked in constant time, revoked by id."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, update

from edgetune.errors import InvalidSpecError, NotFoundError
from edgetune.storage.jobs import Repository, utcnow
from edgetune.storage.models import Scope, Token

#: A generated token: a recognizable prefix and 256 random bits.
TOKEN_PREFIX = "et_"
#: A given secret (`--token`, EDGETUNE_ADMIN_TOKEN) must be at least this long to be guessed no
#: more easily than a generated one is brute-forced in practice.
MIN_TOKEN_LENGTH = 32
MAX_TOKEN_LENGTH = 256
TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_LOOKUP_DIGITS = 16


@dataclass(frozen=True)
class Principal:
    """Who sent a request: the token's id, its tenant and its scope."""

    token_id: str
    tenant: str
    scope: Scope

    def may(self, scopes: Sequence[Scope]) -> bool:
        """Whether this principal holds one of `scopes`; admin holds every scope."""
        return self.scope == Scope.ADMIN or self.scope in scopes


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_tenant(tenant: str) -> str:
    if not TENANT.fullmatch(tenant):
        raise InvalidSpecError("tenant", f"The value of `tenant` is {tenant!r}, but must be 1-64 "
                                         "lowercase letters, digits, '-' or '_', starting with a "
                                         "letter or digit.")
    return tenant


def check_secret(token: str) -> str:
    if not MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH or not token.isprintable() or any(
        c.isspace() for c in token
    ):
        raise InvalidSpecError("token", f"A token must be {MIN_TOKEN_LENGTH}-{MAX_TOKEN_LENGTH} "
                                        "printable characters without spaces.")
    return token


class TokenRepository(Repository):
    """Every read and write of `edgetune_tokens`. Driver errors surface as `StorageError`."""

    def create(self, *, tenant: str, scope: Scope | str, name: str = "",
               token: str | None = None) -> tuple[Token, str]:
        """A new token of `tenant` with `scope`, and its secret (generated unless given). A given
        secret that is already installed with this tenant and scope is returned as it is, so
        that installing it again (every server start, every deploy) changes nothing."""
        check_tenant(tenant)
        scope = Scope(scope)
        secret = check_secret(token) if token is not None else new_token()
        digest = token_hash(secret)
        with self._session() as session:
            existing = session.scalar(select(Token).where(Token.token_hash == digest))
        if existing is not None:
            if (existing.tenant, existing.scope) != (tenant, scope.value):
                raise InvalidSpecError("token", "This secret is already installed for another "
                                                "tenant or scope; use another secret.")
            if existing.revoked_at is not None:
                raise InvalidSpecError("token", "This secret was revoked; use another secret.")
            return existing, secret
        row = Token(id=str(uuid.uuid4()), tenant=tenant, scope=scope.value,
                    name=name[:128] or f"{scope.value} token", lookup=digest[:_LOOKUP_DIGITS],
                    token_hash=digest, created_at=utcnow())
        if not self._insert_unless_taken(row):  # a racing install of the same secret won
            return self.create(tenant=tenant, scope=scope, name=name, token=secret)
        return row, secret

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a live token, else None. The lookup prefix only narrows the rows;
        the full hashes are compared with `hmac.compare_digest`."""
        digest = token_hash(token)
        with self._session() as session:
            rows = session.scalars(
                select(Token).where(Token.lookup == digest[:_LOOKUP_DIGITS],
                                    Token.revoked_at.is_(None))
            ).all()
        for row in rows:
            if hmac.compare_digest(row.token_hash, digest):
                return Principal(token_id=row.id, tenant=row.tenant, scope=Scope(row.scope))
        return None

    def list(self, *, tenant: str | None = None) -> Sequence[Token]:
        query = select(Token).order_by(Token.created_at, Token.id)
        if tenant is not None:
            query = query.where(Token.tenant == tenant)
        with self._session() as session:
            return session.scalars(query).all()

    def revoke(self, token_id: str) -> Token:
        with self._session() as session:
            session.execute(update(Token).where(Token.id == token_id,
                                                Token.revoked_at.is_(None))
                            .values(revoked_at=utcnow()))
            row = session.get(Token, token_id)
            if row is None:
                raise NotFoundError(f"token {token_id!r} not found")
            return row
