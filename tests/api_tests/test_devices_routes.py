"""The `/devices` and `/probes` routes in process: status codes, validation naming the field,
404/409/413, the agent's lease/complete/fail round and the probe cache."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hostile_models import relu
from servers import auth_headers

from edgetune.api import create_app
from edgetune.settings import Settings
from edgetune.storage import Device, utcnow

#: A tiny valid ONNX model: the server checks that an upload is one (parsed, never run).
MODEL = relu()
RESULT = {"p50_ms": 1.0, "p90_ms": 1.5, "mean_ms": 1.1, "std_ms": 0.2, "n": 30, "threads": 2}
QUICK = {"warmup": 1, "min_repeats": 5, "min_time_s": 0.0}


@pytest.fixture
def settings(fresh_data_dir) -> Settings:
    return Settings(data_dir=fresh_data_dir, max_body_bytes=1024, max_upload_bytes=4096)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=auth_headers()) as c:
        yield c


def register(client: TestClient, name: str = "pi", **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/devices", json={"name": name, "runtimes": ["onnxruntime"],
                                                    "threads": 2, **body})
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def upload(client: TestClient, content: bytes = MODEL, **params: Any) -> Any:
    query = {"device": "pi", "input_shape": [3, 8, 8], **QUICK, **params}
    return client.post("/api/v1/probes", params=query, content=content,
                       headers={"Content-Type": "application/octet-stream"})


def lease(client: TestClient, device_id: str, agent: str = "agent-1", wait_s: float = 0) -> Any:
    return client.post(f"/api/v1/devices/{device_id}/probes:lease", params={"wait_s": wait_s},
                       json={"agent": agent})


def loc(response: Any) -> list[Any]:
    return list(response.json()["detail"][0]["loc"])


def test_openapi_lists_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/devices", "/api/v1/devices/{device_id}",
                 "/api/v1/devices/{device_id}/heartbeat",
                 "/api/v1/devices/{device_id}/probes:lease", "/api/v1/probes",
                 "/api/v1/probes/{probe_id}", "/api/v1/probes/{probe_id}:complete",
                 "/api/v1/probes/{probe_id}:fail"):
        assert path in paths


def test_register_creates_then_reattaches_by_name(client: TestClient) -> None:
    first = client.post("/api/v1/devices", json={"name": "pi", "runtimes": ["onnxruntime"],
                                                 "hardware": {"cpu": "arm"}, "threads": 2})
    assert first.status_code == 201
    device = first.json()
    assert device["status"] == "online" and device["hardware"] == {"cpu": "arm"}
    again = client.post("/api/v1/devices", json={"name": "pi", "runtimes": ["torchscript"],
                                                 "threads": 4})
    assert again.status_code == 200
    assert again.json()["id"] == device["id"]
    assert again.json()["runtimes"] == ["torchscript"] and again.json()["threads"] == 4
    listed = client.get("/api/v1/devices").json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == device["id"]
    assert client.get(f"/api/v1/devices/{device['id']}").json()["name"] == "pi"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "bad name!"}, "name"),
        ({"name": "local"}, "name"),
        ({"name": "pi", "threads": 0}, "threads"),
        ({"name": "pi", "runtimes": []}, "runtimes"),
        ({"name": "pi", "runtimes": ["no such/runtime"]}, "runtimes"),
        ({"name": "pi", "unknown": 1}, "unknown"),
    ],
)
def test_bad_registrations_answer_422_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/api/v1/devices", json=body)
    assert response.status_code == 422
    assert field in loc(response)


def test_status_goes_offline_without_heartbeats(client: TestClient, settings: Settings) -> None:
    device = register(client)
    with client.app.state.db.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(sa.update(Device).where(Device.id == device["id"]).values(
            last_heartbeat=utcnow() - timedelta(seconds=settings.device_offline_after_s + 1)))
    assert client.get(f"/api/v1/devices/{device['id']}").json()["status"] == "offline"
    beat = client.post(f"/api/v1/devices/{device['id']}/heartbeat")
    assert beat.status_code == 200 and beat.json()["status"] == "online"


def test_delete_answers_204_then_404(client: TestClient) -> None:
    device = register(client)
    probe = upload(client).json()
    assert client.delete(f"/api/v1/devices/{device['id']}").status_code == 204
    for response in (client.get(f"/api/v1/devices/{device['id']}"),
                     client.delete(f"/api/v1/devices/{device['id']}"),
                     client.post(f"/api/v1/devices/{device['id']}/heartbeat"),
                     lease(client, device["id"]),
                     client.get(f"/api/v1/probes/{probe['id']}")):
        assert response.status_code == 404, response.text


def test_an_upload_is_stored_by_its_sha256_and_queued(
    client: TestClient, settings: Settings
) -> None:
    device = register(client)
    response = upload(client, batch_size=2)
    assert response.status_code == 202
    probe = response.json()
    sha256 = hashlib.sha256(MODEL).hexdigest()
    assert probe["artifact_sha256"] == sha256 and probe["status"] == "pending"
    assert probe["device_id"] == device["id"] and probe["threads"] == 2  # the device's
    assert probe["input_shape"] == [3, 8, 8] and probe["batch_size"] == 2
    assert [p.name for p in settings.artifact_dir.iterdir()] == [f"{sha256}.onnx"]
    assert client.get(f"/api/v1/artifacts/{sha256}").content == MODEL
    # The same request while it is queued shares the probe; by id works as by name.
    assert upload(client, batch_size=2, device=device["id"]).json()["id"] == probe["id"]
    # Server defaults fill what the request leaves out.
    defaults = client.post("/api/v1/probes", params={"device": "pi", "input_shape": 4},
                           content=MODEL).json()
    assert (defaults["warmup"], defaults["min_repeats"], defaults["min_time_s"]) == (
        settings.latency_warmup, settings.latency_min_repeats, settings.latency_min_time_s)


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"device": "nope"}, 404, None),
        ({"runtime": "torchscript"}, 422, "runtime"),  # not offered by the device
        ({"runtime": "tflite"}, 422, "runtime"),
        ({"input_shape": None}, 422, "input_shape"),
        ({"input_shape": [3, 0]}, 422, "input_shape"),
        ({"batch_size": 0}, 422, "batch_size"),
        ({"threads": 0}, 422, "threads"),
        ({"min_time_s": -1}, 422, "min_time_s"),
        ({"path": "/etc/passwd"}, 422, "path"),  # no client path, ever
    ],
)
def test_bad_uploads(
    client: TestClient, params: dict[str, Any], status: int, field: str | None
) -> None:
    register(client)
    response = upload(client, **params)
    assert response.status_code == status, response.text
    if field is not None:
        assert field in loc(response)


def test_an_empty_upload_answers_422(client: TestClient) -> None:
    register(client)
    response = upload(client, content=b"")
    assert response.status_code == 422 and "model" in loc(response)


def test_uploads_are_capped_by_max_upload_bytes_and_other_bodies_by_max_body_bytes(
    client: TestClient, settings: Settings
) -> None:
    register(client)
    # Over max_body_bytes but under max_upload_bytes: only the upload route takes it.
    assert upload(client, content=tiny_onnx(100)).status_code == 202
    big_json = {"name": "pi", "hardware": {"blob": "x" * 2000}}
    assert client.post("/api/v1/devices", json=big_json).status_code == 413
    over = upload(client, content=b"x" * (settings.max_upload_bytes + 1))
    assert over.status_code == 413
    # A chunked body, without a Content-Length, is cut off as well.
    chunked = client.post("/api/v1/probes", params={"device": "pi", "input_shape": 4},
                          content=iter([b"x" * 1000] * 5))
    assert chunked.status_code == 413
    assert not [p for p in settings.artifact_dir.iterdir() if p.name.startswith(".upload")]


def test_lease_complete_and_the_cache(client: TestClient) -> None:
    device = register(client)
    probe = upload(client).json()
    assert lease(client, "no-such-device").status_code == 404
    assert lease(client, device["id"], wait_s=31).status_code == 422

    taken = lease(client, device["id"], wait_s=0.5)
    assert taken.status_code == 200
    assert taken.json()["id"] == probe["id"] and taken.json()["status"] == "leased"
    assert taken.json()["attempts"] == 1 and taken.json()["lease_owner"] == "agent-1"
    assert lease(client, device["id"], agent="agent-2", wait_s=0.3).status_code == 204

    done = client.post(f"/api/v1/probes/{probe['id']}:complete",
                       json={"agent": "agent-1", "result": RESULT})
    assert done.status_code == 200
    assert done.json()["status"] == "done" and done.json()["result"] == RESULT
    # Posting again (a retry) stores nothing new.
    again = client.post(f"/api/v1/probes/{probe['id']}:complete",
                        json={"agent": "agent-1", "result": {**RESULT, "p50_ms": 9.0,
                                                             "p90_ms": 9.0}})
    assert again.status_code == 200 and again.json()["result"] == RESULT
    # The same measurement asked for again is answered from the cache, at once.
    cached = upload(client)
    assert cached.status_code == 200 and cached.json()["id"] == probe["id"]

    listed = client.get("/api/v1/probes", params={"device": "pi", "status": "done"}).json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == probe["id"]
    assert client.get("/api/v1/probes", params={"status": "pending"}).json()["count"] == 0
    assert client.get("/api/v1/probes", params={"device": "nope"}).status_code == 404
    assert client.get("/api/v1/probes", params={"status": "nope"}).status_code == 422


def test_complete_and_fail_errors(client: TestClient) -> None:
    device = register(client)
    probe = upload(client).json()
    url = f"/api/v1/probes/{probe['id']}"
    # Not leased: nothing to report on.
    assert client.post(f"{url}:complete", json={"agent": "a", "result": RESULT}
                       ).status_code == 409
    assert client.post("/api/v1/probes/nope:complete", json={"agent": "a", "result": RESULT}
                       ).status_code == 404
    assert lease(client, device["id"], agent="a").status_code == 200
    bad = client.post(f"{url}:complete", json={"agent": "a", "result": {**RESULT, "p90_ms": 0.5}})
    assert bad.status_code == 422 and loc(bad) == ["body", "result", "p90_ms"]
    missing = client.post(f"{url}:complete", json={"agent": "a", "result": {"p50_ms": 1}})
    assert missing.status_code == 422 and "result" in loc(missing)
    assert client.post(f"{url}:fail", json={"agent": "a", "reason": ""}).status_code == 422
    assert client.post(f"{url}:fail", json={"reason": "x"}).status_code == 422

    # Only the lease holder fails (or completes) it.
    other = client.post(f"{url}:fail", json={"agent": "b", "reason": "not mine"})
    assert other.status_code == 409 and client.get(url).json()["status"] == "leased"
    forged = client.post(f"{url}:complete", json={"agent": "b", "result": RESULT})
    assert forged.status_code == 409 and client.get(url).json()["result"] is None
    failed = client.post(f"{url}:fail", json={"agent": "a", "reason": "the model is corrupt"})
    assert failed.status_code == 200
    assert failed.json()["status"] == "failed" and failed.json()["error"] == "the model is corrupt"
    # Final: a late result changes nothing.
    late = client.post(f"{url}:complete", json={"agent": "a", "result": RESULT})
    assert late.status_code == 200 and late.json()["status"] == "failed"
    # A failed probe answers nothing: asking again queues a new one.
    retry = upload(client)
    assert retry.status_code == 202 and retry.json()["id"] != probe["id"]


def tiny_onnx(k: int) -> bytes:
    """An ONNX MatMul of a [1, k] input by a [k, 4] weight: k x 4 MACs, a few hundred bytes."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((k, 4), 0.5, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def measure(client: TestClient, device_id: str, k: int, p50_ms: float) -> dict[str, Any]:
    """Upload the tiny model of size `k` and complete its probe as an agent would."""
    probe = upload(client, tiny_onnx(k), input_shape=[k])
    assert probe.status_code == 202, probe.text
    assert lease(client, device_id).json()["id"] == probe.json()["id"]
    result = {**RESULT, "p50_ms": p50_ms, "p90_ms": p50_ms * 1.1}
    done = client.post(f"/api/v1/probes/{probe.json()['id']}:complete",
                       json={"agent": "agent-1", "result": result})
    assert done.json()["status"] == "done"
    return dict(done.json())


def test_the_predictor_needs_enough_measured_probes(client: TestClient) -> None:
    device = register(client)
    url = f"/api/v1/devices/{device['id']}/predictor"
    assert client.get("/api/v1/devices/nope/predictor").status_code == 404
    short = client.get(url)
    assert short.status_code == 409 and "0 measured probes" in short.json()["detail"]
    for k in (8, 16, 24):
        measure(client, device["id"], k, 0.01 + 0.001 * k)
    short = client.get(url)
    assert short.status_code == 409
    assert "3 measured probes" in short.json()["detail"] and "at least 8" in short.json()["detail"]


def test_the_predictor_reports_its_cross_validated_error(
    client: TestClient, settings: Settings
) -> None:
    device = register(client)
    url = f"/api/v1/devices/{device['id']}/predictor"
    # Latency exactly linear in the MACs (k x 4): the additive model recovers it.
    probes = [measure(client, device["id"], k, 0.01 + 0.0005 * 4 * k)
              for k in range(8, 8 + 4 * 12, 4)]
    answer = client.get(url)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["device_id"] == device["id"] and body["kind"] == "additive"
    assert body["n_probes"] == 12 and body["n_skipped"] == 0 and body["folds"] >= 2
    assert "matmul_macs" in body["features"]
    assert body["within_10pct"] == 1.0 and body["mape"] < 1.0 and body["spearman"] > 0.99
    # Unchanged history: the same answer, from the cache.
    assert client.get(url).json() == body

    # A probe whose artifact is gone is left out (once the history changes and it refits).
    gone = probes[0]["artifact_sha256"]
    (settings.artifact_dir / f"{gone}.onnx").unlink()
    measure(client, device["id"], 100, 0.01 + 0.0005 * 4 * 100)
    refit = client.get(url).json()
    assert refit["n_probes"] == 12 and refit["n_skipped"] == 1
