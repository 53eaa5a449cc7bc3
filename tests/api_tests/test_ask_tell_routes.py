"""The ask/tell routes in process: objectives by key or by plain name, and the 422s."""

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


def asked(client: TestClient, objectives: list[dict]) -> tuple[str, int]:
    """A new ask/tell job with `objectives` and one trial asked of it."""
    job = client.post("/api/v1/jobs", json={
        "name": "names", "mode": "ask-tell", "seed": 0,
        "space": {"name": None, "params": [{"type": "float", "name": "x", "low": 0, "high": 1}]},
        "objectives": objectives, "budget": {"n_trials": 2},
    })
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    trial = client.post(f"/api/v1/jobs/{job_id}/trials:ask", json={"client_id": "c"})
    assert trial.status_code == 200, trial.text
    return job_id, trial.json()["number"]


def test_a_plain_metric_name_reports_and_tells_its_objective(client: TestClient) -> None:
    # The README's example: `latency_ms` is the objective latency_ms@local.
    job_id, number = asked(client, [{"name": "accuracy"}, {"name": "latency_ms"}])
    trial = f"/api/v1/jobs/{job_id}/trials/{number}"
    report = client.post(f"{trial}:report",
                         json={"step": 1, "values": {"accuracy": 0.5, "latency_ms": 4.0}})
    assert report.status_code == 200, report.text
    told = client.post(f"{trial}:tell",
                       json={"values": {"accuracy": 0.8, "latency_ms": 3.0}})
    assert told.status_code == 200, told.text
    assert told.json()["state"] == "complete"
    assert told.json()["values"] == {"accuracy": 0.8, "latency_ms@local": 3.0}


def test_a_name_two_objectives_share_answers_422_naming_both(client: TestClient) -> None:
    job_id, number = asked(client, [{"name": "latency_ms"},
                                    {"name": "latency_ms", "device": "pi"}])
    trial = f"/api/v1/jobs/{job_id}/trials/{number}"
    for route, body in ((":report", {"step": 1, "values": {"latency_ms": 4.0}}),
                        (":tell", {"values": {"latency_ms": 4.0, "latency_ms@pi": 9.0}})):
        response = client.post(f"{trial}{route}", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["detail"] == [{
            "loc": ["body", "values"], "type": "value_error",
            "msg": "'latency_ms' is ambiguous: 2 objectives measure it; name one of "
                   "latency_ms@local, latency_ms@pi",
        }]
    told = client.post(f"{trial}:tell",
                       json={"values": {"latency_ms@local": 4.0, "latency_ms@pi": 9.0}})
    assert told.json()["values"] == {"latency_ms@local": 4.0, "latency_ms@pi": 9.0}


def test_an_objective_given_twice_or_missing_answers_422(client: TestClient) -> None:
    job_id, number = asked(client, [{"name": "accuracy"}, {"name": "latency_ms"}])
    trial = f"/api/v1/jobs/{job_id}/trials/{number}"
    twice = client.post(f"{trial}:tell", json={"values": {
        "accuracy": 0.8, "latency_ms": 3.0, "latency_ms@local": 3.0}})
    assert twice.status_code == 422
    assert "given twice: latency_ms and latency_ms@local" in twice.json()["detail"][0]["msg"]
    missing = client.post(f"{trial}:tell", json={"values": {"accuracy": 0.8}})
    assert missing.status_code == 422
    assert "missing: latency_ms@local" in missing.json()["detail"][0]["msg"]
    # Nothing was stored: the trial still runs and takes a good tell.
    told = client.post(f"{trial}:tell", json={"values": {"accuracy": 0.8, "latency_ms": 3.0}})
    assert told.json()["state"] == "complete"
