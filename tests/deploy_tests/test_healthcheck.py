"""docker/healthcheck.py, the image's health check: an HTTP answer, or a process by name."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "healthcheck.py"


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("edgetune_healthcheck", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/api/v1/health" else 503)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_http_is_healthy_on_a_2xx_answer_only(healthcheck: ModuleType, server: str) -> None:
    assert healthcheck.main(["http", f"{server}/api/v1/health"]) == 0
    assert healthcheck.main(["http", f"{server}/elsewhere"]) == 1


def test_http_is_unhealthy_when_nothing_listens(healthcheck: ModuleType) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    assert healthcheck.main(["http", f"http://127.0.0.1:{port}/"]) == 1


def test_http_refuses_other_schemes(healthcheck: ModuleType) -> None:
    with pytest.raises(ValueError, match="must start with http"):
        healthcheck.http_ok("file:///etc/passwd")


def test_process_is_found_by_its_executable_name(healthcheck: ModuleType, tmp_path: Path) -> None:
    for pid, argv in {"7": b"/opt/ray/core/src/ray/raylet/raylet\0--port=1\0",
                      "8": b"python\0-m\0raylet-imitator\0", "9": b""}.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(argv)
    assert healthcheck.process_running("raylet", proc=tmp_path)
    assert not healthcheck.process_running("gcs_server", proc=tmp_path)
    assert not healthcheck.process_running("raylet-imitator", proc=tmp_path)


def test_process_finds_this_python(healthcheck: ModuleType) -> None:
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("no /proc on this system")
    argv0 = Path("/proc/self/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    assert healthcheck.main(["process", Path(argv0).name]) == 0


def test_misuse_is_unhealthy_with_a_usage_line(
    healthcheck: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert healthcheck.main([]) == 1
    assert healthcheck.main(["tcp", "localhost:1"]) == 1
    assert "usage:" in capsys.readouterr().err
