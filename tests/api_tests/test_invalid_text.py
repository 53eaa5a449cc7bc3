"""The invalid-text guard in process: what it refuses (and names), and what it must let through:
text that only looks like an escape, and binary uploads, which are full of NUL bytes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from servers import auth_headers

from edgetune.api import create_app
from edgetune.api.invalid_text import invalid_json_field, invalid_text
from edgetune.settings import Settings


@pytest.fixture
def client(fresh_data_dir):
    with TestClient(create_app(Settings(data_dir=fresh_data_dir)), headers=auth_headers()) as c:
        yield c


def test_what_is_invalid_text() -> None:
    assert invalid_text("a\x00b") and invalid_text("\ud800")
    assert not invalid_text("plain, ünïcode, \\u0000 as six characters")
    assert invalid_json_field({"a": [1, {"b": "x\x00"}]}) == ["a", 1, "b"]
    assert invalid_json_field({"ok": ["fine", 2, None]}) is None


def test_the_guard_names_the_field_and_lets_lookalikes_through(client: TestClient) -> None:
    refused = client.post("/api/v1/jobs", content=b'{"name": "a\\u0000"}',
                          headers={"Content-Type": "application/json"})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "name"]
    # An escaped backslash followed by u0000 is six ordinary characters: the spec's own rule
    # (a name pattern) answers, not the guard.
    lookalike = client.post("/api/v1/jobs", content=b'{"name": "a\\\\u0000"}',
                            headers={"Content-Type": "application/json"})
    assert lookalike.status_code == 422
    assert lookalike.json()["detail"][0]["loc"] == ["body", "name"]
    assert "NUL" not in lookalike.json()["detail"][0]["msg"]
    assert client.get("/api/v1/jobs", params={"sta\x00tus": "x"}).json()["detail"][0]["loc"] \
        == ["query", "sta\\u0000tus"]


def test_binary_uploads_pass_the_guard(client: TestClient) -> None:
    client.post("/api/v1/devices", json={"name": "pi", "runtimes": ["onnxruntime"]})
    upload = client.post(
        "/api/v1/probes", params={"device": "pi", "input_shape": [4]},
        content=b"\x00\x01model bytes\x00" * 20, headers={"Content-Type": "application/octet-stream"})
    # Whatever the upload route makes of the bytes, the guard did not refuse them.
    assert upload.status_code < 500 and "must be valid text" not in upload.text, upload.text
