"""Who is calling: bearer tokens checked against `edgetune_tokens`, the scope a route needs, a
token bucket per token (429 with Retry-After), and one per client address for its requests
without a valid token, past which its unknown tokens are refused unchecked."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Collection
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from sqlalchemy import select

from edgetune.errors import AuthenticationError, PermissionDeniedError, RateLimitedError
from edgetune.settings import Settings
from edgetune.storage import DEFAULT_TENANT, Database, Principal, Scope, TokenRepository
from edgetune.storage.models import Token
from edgetune.storage.tokens import new_token, token_hash

#: How long a checked token is trusted without asking the database again: a revoked token
#: stops working within this time.
TOKEN_CACHE_S = 10.0
_CACHE_SIZE = 10_000
#: Who calls when authentication is off (loopback development only; see Settings).
ANONYMOUS = Principal(token_id="anonymous", tenant=DEFAULT_TENANT, scope=Scope.ADMIN)

bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer <token>`.")


class TokenBucket:
    """`rate` tokens a second up to `burst`; `take` answers how long to wait, 0 when allowed."""

    def __init__(self, *, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.level = float(burst)
        self.updated = time.monotonic()

    def wait_s(self, now: float) -> float:
        """How long until `take` would be allowed, taking nothing: 0 when it would be now."""
        level = min(self.burst, self.level + (now - self.updated) * self.rate)
        return 0.0 if level >= 1 else (1 - level) / self.rate

    def take(self, now: float) -> float:
        self.level = min(self.burst, self.level + (now - self.updated) * self.rate)
        self.updated = now
        if self.level >= 1:
            self.level -= 1
            return 0.0
        return (1 - self.level) / self.rate


class Authenticator:
    """One per API process: checked tokens (cached for `TOKEN_CACHE_S`, unknown ones too, so
    that a client guessing tokens cannot make every request a database read) and their
    buckets. The rate limit holds per API process."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.tokens = TokenRepository(db)
        self.settings = settings
        self._checked: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()
        self._buckets: dict[str, TokenBucket] = {}
        #: Per client address, its requests without a valid token.
        self._failures: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    async def principal(self, token: str, *, address: str = "") -> Principal | None:
        """The token's principal, or None when it is unknown or revoked. A token not in the
        cache is looked up in the database only while `address` has failures left (see
        `failed`); past them, RateLimitedError at once."""
        digest = token_hash(token)
        now = time.monotonic()
        with self._lock:
            cached = self._checked.get(digest)
        if cached is not None and now - cached[0] < TOKEN_CACHE_S:
            return cached[1]
        if cached is None or cached[1] is None:  # a token valid before is checked again
            self.check_failures(address)
        found = await run_in_threadpool(self.tokens.authenticate, token)
        with self._lock:
            self._checked[digest] = (now, found)
            self._checked.move_to_end(digest)
            while len(self._checked) > _CACHE_SIZE:
                self._checked.popitem(last=False)
        return found

    def failed(self, address: str) -> None:
        """A request from `address` came without a valid token: take one from its bucket of
        failures (`auth_failures_per_s`, `auth_failures_burst`)."""
        with self._lock:
            bucket = self._failures.get(address)
            if bucket is None:
                if len(self._failures) >= _CACHE_SIZE:  # many addresses: start over
                    self._failures.clear()
                bucket = self._failures[address] = TokenBucket(
                    rate=self.settings.auth_failures_per_s,
                    burst=self.settings.auth_failures_burst)
            bucket.take(time.monotonic())

    def check_failures(self, address: str) -> None:
        """RateLimitedError when `address` has spent its failures: its requests without a
        known valid token are refused before any database lookup, so that a client guessing
        tokens costs the server a dictionary lookup each."""
        with self._lock:
            bucket = self._failures.get(address)
            wait_s = 0.0 if bucket is None else bucket.wait_s(time.monotonic())
        if wait_s > 0:
            raise RateLimitedError(wait_s)

    async def live_token_ids(self, token_ids: Collection[str]) -> set[str]:
        """Of `token_ids`, those not revoked: one query, however many (for open streams)."""
        ids = list(token_ids)
        if not ids:
            return set()

        def query() -> set[str]:
            with self.tokens.db.session() as session:
                return set(session.scalars(
                    select(Token.id).where(Token.id.in_(ids), Token.revoked_at.is_(None))))

        return await run_in_threadpool(query)

    def admit(self, principal: Principal) -> None:
        """Take one request from the principal's bucket; RateLimitedError when it is empty."""
        if self.settings.rate_limit_per_s <= 0:
            return
        with self._lock:
            bucket = self._buckets.get(principal.token_id)
            if bucket is None:
                bucket = self._buckets[principal.token_id] = TokenBucket(
                    rate=self.settings.rate_limit_per_s, burst=self.settings.rate_limit_burst)
            wait_s = bucket.take(time.monotonic())
        if wait_s > 0:
            raise RateLimitedError(wait_s)


async def authenticate(
    security_scopes: SecurityScopes,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller, when its token is live and holds one of the route's scopes: 401 without a
    valid token, 403 with the wrong scope, 429 past its rate."""
    authenticator: Authenticator = request.app.state.auth
    if not authenticator.settings.auth:
        return ANONYMOUS
    address = request.client.host if request.client is not None else ""
    if credentials is None:
        authenticator.check_failures(address)
        authenticator.failed(address)
        raise AuthenticationError("this route needs a bearer token (Authorization: Bearer ...)")
    principal = await authenticator.principal(credentials.credentials, address=address)
    if principal is None:
        authenticator.failed(address)
        raise AuthenticationError("the token is unknown or revoked")
    allowed = [Scope(s) for s in security_scopes.scopes]
    if allowed and not principal.may(allowed):
        raise PermissionDeniedError(
            f"a token of scope {principal.scope.value!r} may not do this; it needs scope "
            f"{' or '.join(repr(s.value) for s in allowed)}"
        )
    authenticator.admit(principal)
    return principal


def install_tokens(db: Database, settings: Settings) -> None:
    """Install the configured admin token; in development, also the local token that the SDK
    and the CLI pick up from the data directory (created once, readable by its owner only)."""
    tokens = TokenRepository(db)
    if settings.admin_token is not None:
        tokens.create(tenant=DEFAULT_TENANT, scope=Scope.ADMIN, name="EDGETUNE_ADMIN_TOKEN",
                      token=settings.admin_token.get_secret_value())
    if settings.auth and settings.env == "development":
        tokens.create(tenant=DEFAULT_TENANT, scope=Scope.ADMIN, name="local development",
                      token=local_token_file(settings.token_file))


def local_token_file(path: Path) -> str:
    """The token in `path`, written first with a new secret when there is none. Several API
    processes starting at once agree on one: the file appears whole or not at all."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(new_token() + "\n")
        try:
            os.link(tmp, path)  # fails when another process linked its file first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
