"""`GET /api/v1/artifacts/{sha256}`: a stored artifact by its hash; 404 and 422 in the API's
error shape; the hash as ETag."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient
from servers import auth_headers

from edgetune.api import create_app
from edgetune.settings import Settings
from edgetune.storage import DeviceRepository, ProbeRepository, open_database


@pytest.fixture
def settings(fresh_data_dir) -> Settings:
    return Settings(data_dir=fresh_data_dir)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings), headers=auth_headers()) as c:
        yield c


def store(settings: Settings, content: bytes, ext: str, *, tenant: str = "default") -> str:
    """Store the file, and a probe of `tenant` measuring it: what lets that tenant fetch it."""
    sha256 = hashlib.sha256(content).hexdigest()
    settings.artifact_dir.mkdir(parents=True, exist_ok=True)
    (settings.artifact_dir / f"{sha256}.{ext}").write_bytes(content)
    db = open_database(settings.url)
    device = DeviceRepository(db).register("board", runtimes=["onnxruntime"], hardware={},
                                           threads=1, tenant=tenant)
    ProbeRepository(db).request(device.id, artifact_sha256=sha256, runtime="onnxruntime",
                                input_shape=[1, 3], batch_size=1, threads=1, warmup=0,
                                min_repeats=1, min_time_s=0.0)
    db.dispose()
    return sha256


@pytest.mark.parametrize("ext", ["onnx", "pt"])
def test_download_by_hash(client: TestClient, settings: Settings, ext: str) -> None:
    content = b"model bytes " + ext.encode() * 1000
    sha256 = store(settings, content, ext)
    response = client.get(f"/api/v1/artifacts/{sha256}")
    assert response.status_code == 200
    assert response.content == content
    assert hashlib.sha256(response.content).hexdigest() == sha256
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["etag"] == f'"{sha256}"'
    assert response.headers["x-artifact-sha256"] == sha256
    assert response.headers["content-disposition"] == f'attachment; filename="{sha256}.{ext}"'
    assert "immutable" in response.headers["cache-control"]


def test_if_none_match_answers_304(client: TestClient, settings: Settings) -> None:
    sha256 = store(settings, b"onnx", "onnx")
    url = f"/api/v1/artifacts/{sha256}"
    for tag in (f'"{sha256}"', f'"other", W/"{sha256}"', "*"):
        response = client.get(url, headers={"If-None-Match": tag})
        assert response.status_code == 304 and response.content == b""
        assert response.headers["etag"] == f'"{sha256}"'
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_a_range_of_the_file(client: TestClient, settings: Settings) -> None:
    sha256 = store(settings, bytes(range(100)), "onnx")
    response = client.get(f"/api/v1/artifacts/{sha256}",
                          headers={"Range": "bytes=10-19", "If-Range": f'"{sha256}"'})
    assert response.status_code == 206 and response.content == bytes(range(10, 20))


def test_unknown_hash_answers_404(client: TestClient, settings: Settings) -> None:
    store(settings, b"something else", "onnx")
    sha256 = hashlib.sha256(b"never stored").hexdigest()
    response = client.get(f"/api/v1/artifacts/{sha256}")
    assert response.status_code == 404
    assert response.json() == {"detail": f"no artifact has the sha256 {sha256}"}


def test_another_tenants_artifact_answers_404(client: TestClient, settings: Settings) -> None:
    sha256 = store(settings, b"their model", "onnx", tenant="other")
    response = client.get(f"/api/v1/artifacts/{sha256}")
    assert response.status_code == 404
    assert response.json() == {"detail": f"no artifact has the sha256 {sha256}"}


def test_only_artifact_formats_are_served(client: TestClient, settings: Settings) -> None:
    sha256 = store(settings, b"a database, say", "db")
    assert client.get(f"/api/v1/artifacts/{sha256}").status_code == 404


@pytest.mark.parametrize(
    "sha256",
    ["abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "0" * 64 + ".onnx", "%2E%2E", "edgetune.db"],
)
def test_malformed_hash_answers_422(client: TestClient, sha256: str) -> None:
    response = client.get(f"/api/v1/artifacts/{sha256}")
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["path", "sha256"]
    assert "pattern" in detail["msg"] and detail["type"] == "string_pattern_mismatch"


def test_paths_out_of_the_artifact_dir_serve_nothing(client: TestClient, settings) -> None:
    (settings.resolved_data_dir / "secret.onnx").write_bytes(b"secret")
    for path in ("..%2Fsecret.onnx", "..%2F..%2Fedgetune.db", "%2E%2E%2Fsecret"):
        response = client.get(f"/api/v1/artifacts/{path}")
        assert response.status_code in (404, 422) and b"secret" not in response.content


def test_the_route_is_in_the_openapi_document(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/api/v1/artifacts/{sha256}"]["get"]
    assert set(operation["responses"]) >= {"200", "304", "404", "422"}
    (parameter,) = [p for p in operation["parameters"] if p["in"] == "path"]
    assert parameter["schema"]["pattern"] == "^[0-9a-f]{64}$"
