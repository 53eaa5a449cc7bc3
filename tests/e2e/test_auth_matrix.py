"""The auth matrix, generated from the running server's OpenAPI document: for every route and
method, no token and a bad token answer 401, a token of a scope the route does not list answers
403, another tenant's resource answers 404 and is absent from listings."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hostile_models import relu
from servers import TEST_TOKEN, RunningServer, create_token, start_server, stop_server

pytestmark = pytest.mark.slow

PUBLIC = {("get", "/api/v1/health")}
#: A tiny valid ONNX model: the server checks that an upload is one (parsed, never run).
MODEL = relu()
ASK_TELL_JOB = {
    "name": "tenant-b", "mode": "ask-tell", "seed": 0,
    "space": {"name": None, "params": [{"type": "float", "name": "x", "low": 0, "high": 1}]},
    "objectives": [{"name": "f1"}],
    "algorithm": {"sampler": "random"},
    "budget": {"n_trials": 5, "parallelism": 2},
}
#: A valid body for each request schema, so that a 404 check passes validation and reaches the
#: tenant check. A new route with a schema missing here fails the test: extend the table.
BODIES: dict[str, Any] = {
    "JobSpec": ASK_TELL_JOB,
    "AskCreate": {"client_id": "tenant-a"},
    "ReportCreate": {"step": 1, "values": {"f1": 0.5}},
    "TellCreate": {"values": {"f1": 0.5}},
    "DeviceCreate": {"name": "a-board", "runtimes": ["onnxruntime"], "threads": 1},
    "ProbeLease": {"agent": "agent-a"},
    "ProbeComplete": {"agent": "agent-a", "result": {"p50_ms": 1, "p90_ms": 1, "mean_ms": 1,
                                                     "std_ms": 0, "n": 5}},
    "ProbeFail": {"agent": "agent-a", "reason": "cannot"},
    "TokenCreate": {"scope": "user"},
}


@dataclass
class World:
    server: RunningServer
    tokens: dict[str, str]  # "a-user", "a-agent", "a-admin", "b-user", "b-agent", "b-admin"
    ids: dict[str, str]  # tenant b's resources, by path parameter name
    openapi: dict[str, Any]


def call(world: World, method: str, path: str, token: str | None, **kwargs: Any) -> httpx.Response:
    headers = {} if token is None else {
        "Authorization": token if token.startswith("Basic ") else f"Bearer {token}"}
    return httpx.request(method, world.server.url + path, headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = start_server(tmp_path_factory.mktemp("auth"), workers=0)
    try:
        tokens = {"a-admin": TEST_TOKEN}
        for name in ("a-user", "a-agent", "b-user", "b-agent", "b-admin"):
            tenant, scope = name.split("-")
            tokens[name] = create_token(server, scope=scope,
                                        tenant="default" if tenant == "a" else "other")
        b = httpx.Client(base_url=server.url + "/api/v1", timeout=30)

        def as_(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {tokens[token]}"}

        job = b.post("/jobs", json=ASK_TELL_JOB, headers=as_("b-user")).json()
        asked = b.post(f"/jobs/{job['id']}/trials:ask", json={"client_id": "b"},
                       headers=as_("b-user")).json()
        device = b.post("/devices", json={"name": "b-board", "runtimes": ["onnxruntime"]},
                        headers=as_("b-agent")).json()
        probe = b.post("/probes", params={"device": device["id"], "input_shape": [4]},
                       content=MODEL, headers={**as_("b-user"),
                                               "Content-Type": "application/octet-stream"}).json()
        token_id = b.get("/tokens", headers=as_("b-admin")).json()["data"][0]["id"]
        ids = {"job_id": job["id"], "number": str(asked["number"]), "device_id": device["id"],
               "probe_id": probe["id"], "sha256": hashlib.sha256(MODEL).hexdigest(),
               "token_id": token_id}
        openapi = httpx.get(server.url + "/openapi.json", timeout=30).json()
        b.close()
        yield World(server, tokens, ids, openapi)
    finally:
        stop_server(server)


def operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in openapi["paths"].items()
            for method, op in item.items() if (method, path) not in PUBLIC]


def scopes_of(op: dict[str, Any]) -> set[str]:
    (requirement,) = op["security"]
    (scopes,) = requirement.values()
    return set(scopes)


def body_of(op: dict[str, Any]) -> dict[str, Any]:
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        name = content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert name in BODIES, f"no example body for request schema {name}: add it to BODIES"
        return {"json": BODIES[name]}
    if "application/octet-stream" in content:
        return {"content": MODEL}
    return {}


def filled(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


def test_every_route_but_health_needs_a_token(world: World) -> None:
    ops = operations(world.openapi)
    assert len(ops) >= 25  # every route of the API, not a few
    for method, path, op in ops:
        assert op.get("security"), f"{method.upper()} {path} declares no security"
        url = filled(path, world.ids)
        for token in (None, "et_not-a-token-" + "x" * 40, "Basic x"):
            response = call(world, method, url, token, **body_of(op))
            assert response.status_code == 401, (method, path, token, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    assert call(world, "get", "/api/v1/health", None).status_code == 200


def test_a_scope_the_route_does_not_list_answers_403(world: World) -> None:
    checked = 0
    for method, path, op in operations(world.openapi):
        allowed = scopes_of(op)
        assert "admin" in allowed, f"{method.upper()} {path}: admin may do everything"
        for scope in {"user", "agent"} - allowed:
            response = call(world, method, filled(path, world.ids), world.tokens[f"a-{scope}"],
                            **body_of(op))
            assert response.status_code == 403, (method, path, scope, response.text)
            checked += 1
    assert checked >= 20


def test_another_tenants_resources_answer_404(world: World) -> None:
    checked = 0
    for method, path, op in operations(world.openapi):
        names = set(re.findall(r"\{(\w+)\}", path)) - {"number"}
        scope = sorted(scopes_of(op), key=["user", "agent", "admin"].index)[0]
        token = world.tokens[f"a-{scope}"]
        if names:
            response = call(world, method, filled(path, world.ids), token, **body_of(op))
        elif (method, path) == ("post", "/api/v1/probes"):  # the device is a query parameter
            response = call(world, method, path, token, params={
                "device": world.ids["device_id"], "input_shape": [4]}, content=MODEL)
        else:
            continue
        assert response.status_code == 404, (method, path, response.text)
        checked += 1
    assert checked >= 20
    # Nothing of tenant b changed: its job runs, its trial is asked, its device and token live.
    b = {"Authorization": f"Bearer {world.tokens['b-admin']}"}
    job = call(world, "get", f"/api/v1/jobs/{world.ids['job_id']}", world.tokens["b-user"])
    assert job.json()["status"] == "running" and job.json()["progress"]["running"] == 1
    assert call(world, "get", f"/api/v1/devices/{world.ids['device_id']}",
                world.tokens["b-agent"]).status_code == 200
    tokens = httpx.get(world.server.url + "/api/v1/tokens", headers=b, timeout=30).json()
    assert all(t["revoked_at"] is None for t in tokens["data"])


@pytest.mark.parametrize("listing,key", [("/api/v1/jobs", "job_id"),
                                         ("/api/v1/devices", "device_id"),
                                         ("/api/v1/probes", "probe_id"),
                                         ("/api/v1/tokens", "token_id")])
def test_another_tenants_resources_are_absent_from_listings(
    world: World, listing: str, key: str
) -> None:
    for name in ("a-admin", "a-user", "a-agent"):
        response = call(world, "get", listing, world.tokens[name])
        if response.status_code == 403:
            continue
        assert response.status_code == 200, response.text
        assert world.ids[key] not in {row["id"] for row in response.json()["data"]}
    mine = call(world, "get", listing, world.tokens["b-admin"]).json()["data"]
    assert world.ids[key] in {row["id"] for row in mine}
