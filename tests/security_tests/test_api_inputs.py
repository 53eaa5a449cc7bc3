"""Hostile requests from a user-scope token against a real server (issue 15, items 6, 12, 14):
listings are bounded and carry no specs, specs and active jobs per tenant are capped, invalid
text answers 422 naming the field (on PostgreSQL too, where it used to read as an outage), a
flood of bad tokens is refused without slowing valid ones, and the database file is private."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from servers import RunningServer, auth_headers, create_token, start_server, stop_server

from edgetune.client import Client
from edgetune.errors import InvalidSpecError

pytestmark = pytest.mark.slow

MAX_ACTIVE = 4
AUTH_BURST = 50  # the failed-auth burst one address may send (default 200)


def ask_tell_job(name: str, **extra: object) -> dict[str, object]:
    return {
        "name": name, "mode": "ask-tell", "seed": 0,
        "space": {"name": None, "params": [{"type": "float", "name": "x", "low": 0, "high": 1}]},
        "objectives": [{"name": "f1"}], "algorithm": {"sampler": "random"},
        "budget": {"n_trials": 5, "parallelism": 1}, **extra,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("inputs"), workers=0, env={
        "EDGETUNE_MAX_ACTIVE_JOBS_PER_TENANT": str(MAX_ACTIVE),
        "EDGETUNE_MAX_SPEC_BYTES": "16384",
        "EDGETUNE_AUTH_FAILURES_BURST": str(AUTH_BURST)})
    yield running
    stop_server(running)


def client(server: RunningServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/api/v1", headers=auth_headers(token), timeout=30)


def test_listings_are_bounded_and_carry_no_specs(server: RunningServer) -> None:
    token = create_token(server, scope="user", tenant="lister")
    with client(server, token) as http:
        # The largest spec the cap lets through, a few times: listings stay small anyway.
        padding = {f"opt{i}": "x" * 200 for i in range(60)}
        spec = ask_tell_job("big", trainer={"options": padding})
        for _ in range(3):
            assert http.post("/jobs", json=spec).status_code == 201
        page = http.get("/jobs", params={"limit": 100})
        assert page.status_code == 200
        assert page.json()["count"] == 3
        job = page.json()["data"][0]
        assert "spec" not in job and job["progress"]["n_trials"] == 5
        assert len(page.content) < 3 * 1000  # a listing is the summaries, not the specs
        assert http.get(f"/jobs/{job['id']}").json()["spec"]["trainer"]["options"] == padding

        # The SDK and the CLI read the summaries.
        with Client(server.url, token=token) as sdk:
            listed = sdk.list(limit=100)
            assert listed.count == 3 and listed.data[0].progress.n_trials == 5
            assert sdk.get(listed.data[0].id).spec.name == "big"
            with pytest.raises(InvalidSpecError, match="limit"):
                sdk.list(limit=101)
        cli = subprocess.run([sys.executable, "-m", "edgetune", "jobs", "--server", server.url],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "EDGETUNE_TOKEN": token})
        assert cli.returncode == 0 and "3 jobs" in cli.stdout and "big" in cli.stdout, cli

        too_many = http.get("/jobs", params={"limit": 500})
        assert too_many.status_code == 422
        detail = too_many.json()["detail"][0]
        assert detail["loc"] == ["query", "limit"] and "100" in detail["msg"]

        # A spec over the cap is refused before it is parsed, naming the bound.
        huge = ask_tell_job("huge", trainer={"options": {f"o{i}": "y" * 1000 for i in range(30)}})
        refused = http.post("/jobs", json=huge)
        assert refused.status_code == 413
        assert "EDGETUNE_MAX_SPEC_BYTES" in refused.json()["detail"]


def test_active_jobs_per_tenant_are_capped(server: RunningServer) -> None:
    with client(server, create_token(server, scope="user", tenant="flooder")) as http, \
            client(server, create_token(server, scope="user", tenant="neighbour")) as other:
        made = [http.post("/jobs", json=ask_tell_job(f"j{i}"),
                          headers={"Idempotency-Key": f"key-{i}"}) for i in range(MAX_ACTIVE)]
        assert [r.status_code for r in made] == [201] * MAX_ACTIVE
        refused = http.post("/jobs", json=ask_tell_job("one-more"))
        assert refused.status_code == 409
        assert "EDGETUNE_MAX_ACTIVE_JOBS_PER_TENANT" in refused.json()["detail"]
        # A retried submission is not a new job: it still gets its job back.
        again = http.post("/jobs", json=ask_tell_job("j0"), headers={"Idempotency-Key": "key-0"})
        assert again.status_code == 201 and again.json()["id"] == made[0].json()["id"]
        # Another tenant is not held back, and a cancelled job frees a place.
        assert other.post("/jobs", json=ask_tell_job("mine")).status_code == 201
        assert http.post(f"/jobs/{made[0].json()['id']}/cancel").status_code == 200
        assert http.post("/jobs", json=ask_tell_job("now")).status_code == 201


def test_seeds_beyond_numpy_and_torch_are_refused(server: RunningServer) -> None:
    with client(server, create_token(server, scope="user", tenant="seeder")) as http:
        response = http.post("/jobs", json={"name": "seed", "trainer": {"seed": 2**70}})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "trainer", "seed"]


def test_bad_token_floods_are_refused_cheaply_and_real_tokens_still_answer(
    server: RunningServer,
) -> None:
    real = create_token(server, scope="user", tenant="victim")

    def bad(_: int) -> int:
        fake = "et_" + secrets.token_urlsafe(32)  # a new guess each time: no cache helps
        return httpx.get(f"{server.url}/api/v1/jobs", headers=auth_headers(fake),
                         timeout=30).status_code

    def good(_: int) -> int:
        return httpx.get(f"{server.url}/api/v1/jobs", headers=auth_headers(real),
                         timeout=30).status_code

    assert good(0) == 200
    with ThreadPoolExecutor(8) as pool:
        flood = pool.map(bad, range(3 * AUTH_BURST))
        served = list(pool.map(good, range(40)))
        statuses = list(flood)
    assert set(statuses) <= {401, 429} and statuses.count(429) > 0
    assert served == [200] * 40  # the guesses from the same address never lock it out
    refused = httpx.get(f"{server.url}/api/v1/jobs", headers=auth_headers("et_guess"), timeout=30)
    assert refused.status_code in (401, 429)  # 429 while the address's budget is spent


def test_the_database_and_token_files_are_private(server: RunningServer) -> None:
    for name in ("edgetune.db", "token"):
        mode = stat.S_IMODE(os.stat(server.data_dir / name).st_mode)
        assert mode == 0o600, (name, oct(mode))


def test_a_new_data_directory_is_private(tmp_path: Path) -> None:
    from edgetune.storage.db import create_private_file

    create_private_file(tmp_path / "data" / "edgetune.db")
    assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "edgetune.db").st_mode) == 0o600


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from conftest import _postgres_database  # the shared fixture's database, module-scoped

    with _postgres_database() as url:
        running = start_server(tmp_path_factory.mktemp("inputs-pg"), workers=0,
                               env={"EDGETUNE_DATABASE_URL": url})
        yield running
        stop_server(running)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_invalid_text_answers_422_naming_the_field(
    backend: str, request: pytest.FixtureRequest
) -> None:
    running: RunningServer = request.getfixturevalue(
        "server" if backend == "sqlite" else "postgres_server")
    user = client(running, create_token(running, scope="user", tenant=f"nul-{backend}")
                  if backend == "sqlite" else os.environ["EDGETUNE_TOKEN"])
    with user as http:
        job = http.post("/jobs", json=ask_tell_job(f"text-{uuid.uuid4().hex[:6]}"))
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]

        def loc(response: httpx.Response) -> list[object]:
            assert response.status_code == 422, response.text
            return list(response.json()["detail"][0]["loc"])

        assert loc(http.get("/jobs/a%00b")) == ["path"]
        assert loc(http.post("/jobs/a%00b/cancel")) == ["path"]
        assert loc(http.get("/jobs", params={"status": "queued\x00"})) == ["query", "status"]
        assert loc(http.post("/jobs", json=ask_tell_job("nul\x00name"))) == ["body", "name"]
        asked = http.post(f"/jobs/{job_id}/trials:ask", json={"client_id": "c1"}).json()
        tell = f"/jobs/{job_id}/trials/{asked['number']}:tell"
        assert loc(http.post(tell, json={"values": {"f1": 0.5}, "metrics": {"k\x00": 1.0}})) \
            == ["body", "metrics", "k\\u0000"]
        assert loc(http.post(tell, json={"state": "failed", "error": "bad\x00reason"})) \
            == ["body", "error"]
        lone = b'{"state": "failed", "error": "\\ud800"}'
        assert loc(http.post(tell, content=lone,
                             headers={"Content-Type": "application/json"})) == ["body", "error"]
        # Nothing of that reached the trial: it is still running, and can be told properly.
        told = http.post(tell, json={"values": {"f1": 0.5}})
        assert told.status_code == 200 and told.json()["state"] == "complete"
        # A number out of the database's range is the request's fault too, not an outage.
        huge = http.get(f"/jobs/{job_id}/trials/{2**40}")
        assert huge.status_code in (404, 422), huge.text
