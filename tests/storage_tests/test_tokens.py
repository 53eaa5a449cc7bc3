"""Token storage on SQLite and PostgreSQL: hashed, checked, installed once, revoked."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from racing import race

from edgetune.errors import InvalidSpecError, NotFoundError
from edgetune.storage import Scope, TokenRepository, open_database
from edgetune.storage.tokens import token_hash


@pytest.fixture
def tokens(database_url: str):
    db = open_database(database_url)
    yield TokenRepository(db)
    db.dispose()


def test_a_created_token_authenticates_and_only_its_hash_is_stored(tokens) -> None:
    row, secret = tokens.create(tenant="team-a", scope="user", name="ci")
    assert secret.startswith("et_") and len(secret) > 40
    principal = tokens.authenticate(secret)
    assert principal is not None
    assert (principal.token_id, principal.tenant, principal.scope) == (row.id, "team-a",
                                                                       Scope.USER)
    with tokens.db.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT * FROM edgetune_tokens")).mappings().one()
    assert secret not in {str(v) for v in stored.values()}
    assert stored["token_hash"] == token_hash(secret)
    assert tokens.authenticate(secret + "x") is None
    assert tokens.authenticate("") is None


def test_installing_a_given_secret_again_changes_nothing(tokens) -> None:
    secret = "s" * 40
    first, _ = tokens.create(tenant="default", scope="admin", token=secret)
    again, _ = tokens.create(tenant="default", scope="admin", token=secret)
    assert again.id == first.id and len(tokens.list()) == 1
    with pytest.raises(InvalidSpecError, match="another tenant or scope"):
        tokens.create(tenant="default", scope="user", token=secret)


def test_racing_installs_of_one_secret_make_one_token(tokens) -> None:
    ids = race(lambda _: tokens.create(tenant="default", scope="agent", token="r" * 48)[0].id)
    assert len(set(ids)) == 1 and len(tokens.list()) == 1


@pytest.mark.parametrize("secret", ["short", "x" * 257, "has a space" * 4, "tab\t" * 10])
def test_a_given_secret_must_be_long_and_printable(tokens, secret: str) -> None:
    with pytest.raises(InvalidSpecError, match="token"):
        tokens.create(tenant="default", scope="user", token=secret)


@pytest.mark.parametrize("tenant", ["", "Upper", "-lead", "a" * 65, "sp ace", "x/../y"])
def test_tenant_names_follow_one_rule(tokens, tenant: str) -> None:
    with pytest.raises(InvalidSpecError, match="tenant"):
        tokens.create(tenant=tenant, scope="user")


def test_unknown_scope_is_refused(tokens) -> None:
    with pytest.raises(ValueError, match="superuser"):
        tokens.create(tenant="default", scope="superuser")


def test_a_revoked_token_no_longer_authenticates(tokens) -> None:
    row, secret = tokens.create(tenant="default", scope="user")
    revoked = tokens.revoke(row.id)
    assert revoked.revoked_at is not None
    assert tokens.authenticate(secret) is None
    assert tokens.revoke(row.id).revoked_at == revoked.revoked_at  # revoking again: no change
    with pytest.raises(InvalidSpecError, match="revoked"):
        tokens.create(tenant="default", scope="user", token=secret)
    with pytest.raises(NotFoundError):
        tokens.revoke("no-such-token")


def test_listing_filters_by_tenant(tokens) -> None:
    tokens.create(tenant="a", scope="user")
    tokens.create(tenant="b", scope="agent")
    assert [t.tenant for t in tokens.list(tenant="a")] == ["a"]
    assert sorted(t.tenant for t in tokens.list()) == ["a", "b"]
