"""schemathesis against a running server: every operation, with valid and invalid inputs
(examples, coverage and fuzzing phases), reaching real resources: 0 server errors and 0
responses that break the OpenAPI document."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest
from hostile_models import relu
from servers import TEST_TOKEN, RunningServer, auth_headers, create_token, start_server, stop_server

pytestmark = pytest.mark.slow

#: A tiny valid ONNX model: the server checks that an upload is one (parsed, never run).
MODEL = relu()
JOB = {
    "name": "fuzzed", "mode": "ask-tell", "seed": 0,
    "space": {"name": None, "params": [{"type": "float", "name": "x", "low": 0, "high": 1}]},
    "objectives": [{"name": "f1"}, {"name": "f2"}],
    "algorithm": {"sampler": "nsga2"},
    "budget": {"n_trials": 1000, "parallelism": 64},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # No rate limit: schemathesis sends thousands of requests with one token.
    running = start_server(tmp_path_factory.mktemp("fuzz"), workers=0,
                           env={"EDGETUNE_RATE_LIMIT_PER_S": "0"})
    yield running
    stop_server(running)


def real_resources(server: RunningServer) -> dict[str, str]:
    """Resources for the fuzzer to reach past 404: a job with a running trial, a device, a
    probe of an uploaded model."""
    with httpx.Client(base_url=server.url + "/api/v1", headers=auth_headers(), timeout=30) as c:
        job = c.post("/jobs", json=JOB).json()
        number = c.post(f"/jobs/{job['id']}/trials:ask", json={"client_id": "fuzz"}).json()
        device = c.post("/devices", json={"name": "board", "runtimes": ["onnxruntime"]}).json()
        probe = c.post("/probes", params={"device": device["id"], "input_shape": [4]},
                       content=MODEL, headers={"Content-Type": "application/octet-stream"}
                       ).json()
        # Revoking a token is one of the operations: give it one nobody uses.
        token = next(t["id"] for t in c.get("/tokens").json()["data"] if t["scope"] == "agent")
    return {"path.job_id": job["id"], "path.number": str(number["number"]),
            "path.device_id": device["id"], "path.probe_id": probe["id"],
            "path.sha256": probe["artifact_sha256"], "path.token_id": token}


def test_no_server_errors_and_no_responses_outside_the_schema(
    server: RunningServer, tmp_path: Path
) -> None:
    executable = shutil.which("schemathesis", path=f"{Path(sys.executable).parent}:"
                              f"{os.environ.get('PATH', '')}")
    if executable is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[dev]'")
    create_token(server, scope="agent")  # one token of each kind in the listing
    parameters = real_resources(server)
    # A lease waits up to 30 s for a probe: let it answer at once.
    parameters["query.wait_s"] = "0"
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        f"headers = {{ Authorization = \"Bearer {TEST_TOKEN}\" }}\n"
        "[parameters]\n" + "".join(f"{json.dumps(k)} = {json.dumps(v)}\n"
                                   for k, v in parameters.items())
    )
    report = tmp_path / "report"
    done = subprocess.run(
        [executable, "--config-file", str(config), "run", f"{server.url}/openapi.json",
         "--checks", "not_a_server_error,response_schema_conformance",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--seed", "1",
         "--request-timeout", "40", "--generation-database", "none", "--no-color",
         "--report", "junit", "--report-dir", str(report)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-8000:] + "\n" + server.log_tail()
    (junit,) = report.glob("junit*.xml")
    suite = ElementTree.parse(junit).getroot()
    cases = suite.findall(".//testcase")
    assert len(cases) >= 30, output[-4000:]  # every operation, not a filtered few
    broken = [c.get("name") for c in cases if c.find("failure") is not None
              or c.find("error") is not None]
    assert broken == [], output[-8000:]
    # Every operation got past authentication for some inputs: the token worked throughout.
    assert "Authentication failed" not in output, output[-4000:]
    assert "Traceback" not in server.log.read_text(errors="replace")
