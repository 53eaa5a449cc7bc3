"""Event streams under a user-scope attacker, against a real server: streams are capped per
token and in all (429 with Retry-After naming the cap), a freed slot can be used again, and a
revoked token's open stream ends within seconds (issue 15, items 5 and 14a)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
from servers import RunningServer, auth_headers, start_server, stop_server

pytestmark = pytest.mark.slow

ASK_TELL_JOB = {
    "name": "watched", "mode": "ask-tell", "seed": 0,
    "space": {"name": None, "params": [{"type": "float", "name": "x", "low": 0, "high": 1}]},
    "objectives": [{"name": "f1"}], "algorithm": {"sampler": "random"},
    "budget": {"n_trials": 5, "parallelism": 1},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("events"), workers=0, env={
        "EDGETUNE_EVENTS_MAX_STREAMS_PER_TOKEN": "3", "EDGETUNE_EVENTS_MAX_STREAMS": "5"})
    yield running
    stop_server(running)


def new_user_token(server: RunningServer) -> tuple[str, str]:
    """(id, secret) of a new user-scope token of tenant `default`, made by the admin."""
    created = httpx.post(f"{server.url}/api/v1/tokens", json={"scope": "user"},
                         headers=auth_headers(), timeout=30).json()
    return created["id"], created["token"]


class Stream:
    """An event stream as a client holds it: the response and its line iterator (httpx
    closes a response when the iterator reading it is dropped)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status_code = response.status_code
        self.lines = response.iter_lines()

    def rest(self) -> list[str]:
        return list(self.lines)


def open_stream(stack: ExitStack, http: httpx.Client, job_id: str) -> Stream:
    """An open event stream (its first event read), or the refusal."""
    stream = Stream(stack.enter_context(http.stream(
        "GET", f"/api/v1/jobs/{job_id}/events", params={"interval_s": 0.1})))
    if stream.status_code == 200:
        while not next(stream.lines).startswith("data:"):
            pass
    else:
        stream.response.read()
    return stream


def user_client(server: RunningServer, secret: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=auth_headers(secret),
                        timeout=httpx.Timeout(10.0))


def test_streams_are_capped_per_token_and_in_all(server: RunningServer) -> None:
    _, token_a = new_user_token(server)
    _, token_b = new_user_token(server)
    with ExitStack() as stack:
        a = stack.enter_context(user_client(server, token_a))
        b = stack.enter_context(user_client(server, token_b))
        job_id = a.post("/api/v1/jobs", json=ASK_TELL_JOB).json()["id"]

        held = [open_stream(stack, a, job_id) for _ in range(3)]
        assert [r.status_code for r in held] == [200, 200, 200]
        refused = open_stream(stack, a, job_id)
        assert refused.status_code == 429
        assert int(refused.response.headers["Retry-After"]) >= 1
        assert "EDGETUNE_EVENTS_MAX_STREAMS_PER_TOKEN (3)" in refused.response.json()["detail"]

        held += [open_stream(stack, b, job_id) for _ in range(2)]
        assert [r.status_code for r in held[3:]] == [200, 200]
        refused = open_stream(stack, b, job_id)  # b holds 2 of its 3, but the server 5 of 5
        assert refused.status_code == 429
        assert "EDGETUNE_EVENTS_MAX_STREAMS (5)" in refused.response.json()["detail"]

        # The other routes still answer while the streams are open.
        assert a.get(f"/api/v1/jobs/{job_id}").status_code == 200

    # Every stream closed: their slots come back once the server sees the clients leave.
    with ExitStack() as stack:
        a = stack.enter_context(user_client(server, token_a))
        deadline = time.monotonic() + 20
        statuses: list[int] = []
        while time.monotonic() < deadline:
            held = [open_stream(stack, a, job_id) for _ in range(3)]
            statuses = [r.status_code for r in held]
            if statuses == [200, 200, 200]:
                break
            stack.close()
            stack = ExitStack()
            a = stack.enter_context(user_client(server, token_a))
            time.sleep(0.5)
        assert statuses == [200, 200, 200]
        stack.close()


def test_a_revoked_tokens_stream_ends_within_seconds(server: RunningServer) -> None:
    token_id, secret = new_user_token(server)
    with user_client(server, secret) as http, ExitStack() as stack:
        job_id = http.post("/api/v1/jobs", json={**ASK_TELL_JOB, "name": "revoked"}).json()["id"]
        stream = open_stream(stack, http, job_id)
        assert stream.status_code == 200
        revoked = httpx.delete(f"{server.url}/api/v1/tokens/{token_id}", headers=auth_headers(),
                               timeout=30)
        assert revoked.status_code == 200
        revoked_at = time.monotonic()
        # The stream must close by itself (the read timeout is 10 s; keep-alives come at 15 s).
        rest = stream.rest()
        ended_after = time.monotonic() - revoked_at
        assert any("revoked" in line for line in rest), rest
        assert ended_after < 10, ended_after  # the hub re-checks tokens every 2 s


def test_a_small_interval_is_raised_not_refused(server: RunningServer) -> None:
    _, secret = new_user_token(server)
    with user_client(server, secret) as http, ExitStack() as stack:
        job_id = http.post("/api/v1/jobs", json={**ASK_TELL_JOB, "name": "eager"}).json()["id"]
        assert open_stream(stack, http, job_id).status_code == 200
        response = http.get(f"/api/v1/jobs/{job_id}/events", params={"interval_s": 0.01})
        assert response.status_code == 422  # below the route's own bound
        assert response.json()["detail"][0]["loc"] == ["query", "interval_s"]
