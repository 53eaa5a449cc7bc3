"""The `/jobs` routes in process: status codes, error shapes, pagination, OpenAPI."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from servers import auth_headers

from edgetune.api import create_app
from edgetune.settings import Settings


@pytest.fixture
def client(fresh_data_dir):
    with TestClient(create_app(Settings(data_dir=fresh_data_dir)), headers=auth_headers()) as c:
        yield c


def submit(client: TestClient, **spec):
    return client.post("/api/v1/jobs", json={"name": "api", **spec})


def test_health_and_openapi(client: TestClient) -> None:
    assert client.get("/api/v1/health").json() == {
        "status": "ok", "version": "0.1.0", "database": "sqlite"
    }
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/cancel",
                 "/api/v1/jobs/{job_id}/trials", "/api/v1/jobs/{job_id}/trials/{number}",
                 "/api/v1/jobs/{job_id}/pareto", "/api/v1/health"):
        assert path in paths


def test_create_answers_201_with_the_queued_job(client: TestClient) -> None:
    response = submit(client, objectives=[{"name": "accuracy"}, {"name": "size_bytes"}])
    assert response.status_code == 201
    job = response.json()
    assert job["status"] == "queued" and job["spec"]["name"] == "api"
    assert job["progress"] == {"n_trials": 20, "complete": 0, "pruned": 0, "failed": 0,
                               "running": 0, "retried": 0}
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["id"] == job["id"]


@pytest.mark.parametrize(
    ("spec", "loc", "text"),
    [
        ({"budget": {"n_trials": 0}}, ["body", "budget", "n_trials"], "greater than or equal"),
        ({"algorithm": {"sampler": "nope"}}, ["body", "algorithm", "sampler"], "known samplers"),
        ({"objectives": [{"name": "accuracy"}, {"name": "size_bytes"}],
          "algorithm": {"pruner": "median"}}, ["body", "algorithm", "pruner"], "for several: mo-asha"),
        ({"space": {"name": None, "params": [
            {"type": "categorical", "name": "a", "choices": [1, True, 1.0]}]}},
         ["body", "space", "params", 0, "categorical"], "choices 1, True, 1.0 are one choice"),
    ],
)
def test_bad_spec_answers_422_naming_the_field(client, spec, loc, text) -> None:
    response = submit(client, **spec)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc and text in detail["msg"]


def test_narrowing_a_built_in_spaces_conditional_target_is_accepted(client: TestClient) -> None:
    # Was 422: "'n_layers' never takes 3, 4, so 'width_2' would never be sampled".
    response = submit(client, trainer={"name": "tabular-classifier", "dataset": "iris"},
                      space={"name": "mlp", "params": [
                          {"type": "int", "name": "n_layers", "low": 1, "high": 2}]})
    assert response.status_code == 201, response.text


def test_malformed_and_oversized_bodies(client: TestClient) -> None:
    response = client.post("/api/v1/jobs", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    response = client.post("/api/v1/jobs", content=b"x" * 2_000_000,
                           headers={"content-type": "application/json"})
    assert response.status_code == 413

    def chunked():  # no Content-Length: the limit holds while the body streams in
        for _ in range(300):
            yield b"x" * 10_000

    response = client.post("/api/v1/jobs", content=chunked(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize(
    "body",
    [
        '{"name":"x","budget":{"timeout_s":1e400}}',
        '{"name":"x","budget":{"timeout_s":NaN}}',
        '{"name":"x","space":{"params":[{"type":"categorical","name":"kernel_size","choices":[Infinity]}]}}',
        '{"name":"x","space":{"params":[{"type":"int","name":"depth","low":0,"high":1' + "0" * 400 + '}]}}',
        '{"name":"x","space":{"params":[{"type":"float","name":"dropout","low":0,"high":1e15,"step":1e-300}]}}',
        '{"name":"x","constraints":[{"metric":"params","op":"<=","bound":-Infinity}]}',
    ],
)
def test_non_finite_and_huge_numbers_answer_422_not_500(client, body: str) -> None:
    response = client.post("/api/v1/jobs", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "body"


def test_list_paginates_and_filters(client: TestClient) -> None:
    ids = [submit(client).json()["id"] for _ in range(3)]
    client.post(f"/api/v1/jobs/{ids[0]}/cancel")
    page = client.get("/api/v1/jobs", params={"limit": 2}).json()
    assert page["count"] == 3 and len(page["data"]) == 2
    assert page["data"][0]["id"] == ids[2]
    cancelled = client.get("/api/v1/jobs", params={"status": "cancelled"}).json()
    assert [j["id"] for j in cancelled["data"]] == [ids[0]]
    assert client.get("/api/v1/jobs", params={"status": "weird"}).status_code == 422
    assert client.get("/api/v1/jobs", params={"limit": 0}).status_code == 422


def test_missing_resources_answer_404_and_finished_cancel_409(client: TestClient) -> None:
    assert client.get("/api/v1/jobs/missing").status_code == 404
    assert client.get("/api/v1/jobs/missing/trials").status_code == 404
    assert client.get("/api/v1/jobs/missing/pareto").status_code == 404
    job_id = submit(client).json()["id"]
    assert client.get(f"/api/v1/jobs/{job_id}/trials/0").status_code == 404
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409


def test_pareto_of_a_job_without_trials_and_bad_objective_subset(client: TestClient) -> None:
    job_id = submit(client, objectives=[{"name": "accuracy"}, {"name": "params"}]).json()["id"]
    front = client.get(f"/api/v1/jobs/{job_id}/pareto").json()
    assert front["data"] == [] and front["front_size"] == 0
    response = client.get(f"/api/v1/jobs/{job_id}/pareto", params={"objectives": "latency_ms"})
    assert response.status_code == 422
    assert "'latency_ms' is not an objective of the job" in response.json()["detail"][0]["msg"]
