"""Authentication in process: settings that refuse unsafe setups, the local development token,
revocation, the rate limit (429 with Retry-After) and idempotent submission."""

from __future__ import annotations

import stat
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from servers import TEST_TOKEN, auth_headers

from edgetune.api import auth, create_app
from edgetune.client import local_token
from edgetune.settings import Settings
from edgetune.storage import TokenRepository

JOB = {
    "name": "sphere", "seed": 0, "mode": "ask-tell",
    "space": {"name": None, "params": [{"type": "float", "name": "x", "low": 0, "high": 1}]},
    "objectives": [{"name": "f1"}],
    "algorithm": {"sampler": "random"},
    "budget": {"n_trials": 3},
}


def app_client(settings: Settings, **headers: str) -> TestClient:
    return TestClient(create_app(settings), headers={**auth_headers(), **headers})


@pytest.fixture
def client(fresh_data_dir) -> Iterator[TestClient]:
    with app_client(Settings(data_dir=fresh_data_dir)) as c:
        yield c


# --- settings ------------------------------------------------------------------------------
def test_a_public_address_needs_authentication() -> None:
    with pytest.raises(ValidationError, match="authentication is off"):
        Settings(host="0.0.0.0", auth=False)
    assert Settings(host="0.0.0.0").auth  # on by default: allowed
    assert not Settings(host="127.0.0.1", auth=False).auth


def test_production_refuses_authentication_off() -> None:
    with pytest.raises(ValidationError, match="cannot be turned off"):
        Settings(env="production", database_url="sqlite:///x.db", auth=False)


def test_a_short_admin_token_is_refused() -> None:
    with pytest.raises(ValidationError, match="admin_token"):
        Settings(admin_token="secret")


# --- tokens --------------------------------------------------------------------------------
def test_a_development_server_writes_a_local_token_for_the_sdk(tmp_path, monkeypatch) -> None:
    settings = Settings(data_dir=tmp_path, admin_token=None)
    with TestClient(create_app(settings)) as c:
        token = settings.token_file.read_text().strip()
        assert stat.S_IMODE(settings.token_file.stat().st_mode) == 0o600
        monkeypatch.delenv("EDGETUNE_TOKEN")
        assert local_token(tmp_path) == token
        assert c.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}).is_success
    with TestClient(create_app(settings)) as c:  # a restart keeps the same token
        assert settings.token_file.read_text().strip() == token
        assert c.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}).is_success


def test_production_writes_no_local_token(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, env="production",
                        database_url=f"sqlite:///{tmp_path / 'e.db'}")
    with app_client(settings) as c:
        assert c.get("/api/v1/jobs").is_success  # the admin token from the environment
    assert not settings.token_file.exists()


def test_without_authentication_on_loopback_no_token_is_needed(tmp_path) -> None:
    with TestClient(create_app(Settings(data_dir=tmp_path, auth=False))) as c:
        assert c.get("/api/v1/jobs").status_code == 200


def test_admins_create_list_and_revoke_their_tenants_tokens(client, monkeypatch) -> None:
    monkeypatch.setattr(auth, "TOKEN_CACHE_S", 0.0)  # see revocation at once
    created = client.post("/api/v1/tokens", json={"scope": "user", "name": "ci"})
    assert created.status_code == 201, created.text
    secret = created.json()["token"]
    user = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/jobs", headers=user).status_code == 200
    assert client.get("/api/v1/tokens", headers=user).status_code == 403
    listed = client.get("/api/v1/tokens").json()
    assert created.json()["id"] in {t["id"] for t in listed["data"]}
    assert all("token" not in t for t in listed["data"])
    revoked = client.delete(f"/api/v1/tokens/{created.json()['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = client.get("/api/v1/jobs", headers=user)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert client.post("/api/v1/tokens", json={"scope": "root"}).status_code == 422


def test_a_token_is_trusted_from_the_cache_for_a_few_seconds(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    with app_client(settings) as c:
        assert c.get("/api/v1/jobs").status_code == 200
        for token in TokenRepository(c.app.state.db).list():  # type: ignore[attr-defined]
            TokenRepository(c.app.state.db).revoke(token.id)  # type: ignore[attr-defined]
        # Still trusted within TOKEN_CACHE_S (10 s): revocation takes effect within it.
        assert c.get("/api/v1/jobs").status_code == 200


# --- rate limit ----------------------------------------------------------------------------
def test_past_its_rate_a_token_gets_429_with_retry_after(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, rate_limit_per_s=0.5, rate_limit_burst=3)
    with app_client(settings) as c:
        codes = [c.get("/api/v1/jobs").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = c.get("/api/v1/jobs")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert "retry after" in limited.json()["detail"]
        assert c.get("/api/v1/health").status_code == 200  # health is not limited
        # Another token has a bucket of its own.
        _, secret = TokenRepository(c.app.state.db).create(  # type: ignore[attr-defined]
            tenant="default", scope="user")
        assert c.get("/api/v1/jobs", headers={"Authorization": f"Bearer {secret}"}).is_success
        assert c.get("/api/v1/jobs", headers={"Authorization": f"Bearer {TEST_TOKEN}"}
                     ).status_code == 429


def test_a_rate_of_zero_turns_the_limit_off(tmp_path) -> None:
    with app_client(Settings(data_dir=tmp_path, rate_limit_per_s=0, rate_limit_burst=1)) as c:
        assert {c.get("/api/v1/jobs").status_code for _ in range(20)} == {200}


# --- idempotent submission -----------------------------------------------------------------
def test_a_repeated_submission_with_its_key_returns_the_first_job(client) -> None:
    first = client.post("/api/v1/jobs", json=JOB, headers={"Idempotency-Key": "k-1"})
    again = client.post("/api/v1/jobs", json=JOB, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201 and again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert client.get("/api/v1/jobs").json()["count"] == 1
    other = client.post("/api/v1/jobs", json={**JOB, "name": "other"},
                        headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    assert client.post("/api/v1/jobs", json=JOB).json()["id"] != first.json()["id"]
    assert client.get("/api/v1/jobs").json()["count"] == 2
    bad = client.post("/api/v1/jobs", json=JOB, headers={"Idempotency-Key": "x" * 129})
    assert bad.status_code == 422
