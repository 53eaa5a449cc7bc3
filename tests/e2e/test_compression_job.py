"""End to end: a job searching mobilenet with pruning and quantization, through the server."""

from __future__ import annotations

import httpx
import numpy as np
import onnx
import pytest
from servers import auth_headers

from edgetune.client import Client

pytestmark = pytest.mark.slow

SPEC = {
    "name": "e2e-mobilenet-compression",
    "trainer": {"name": "image-classifier", "dataset": "digits", "epochs": 2},
    "space": {
        "name": "mobilenet",
        "params": [
            {"type": "fixed", "name": "resolution", "value": 8},
            *({"type": "fixed", "name": f"s{i}_blocks", "value": 1} for i in (1, 2, 3)),
            {"type": "categorical", "name": "prune", "choices": ["none", "channel"]},
            {"type": "fixed", "name": "prune_amount", "value": 0.5},
            {"type": "categorical", "name": "quantization", "choices": ["fp32", "int8-static"]},
        ],
    },
    "objectives": [{"name": "accuracy"}, {"name": "size_bytes"}, {"name": "flops"}],
    "algorithm": {"sampler": "nsga2"},
    "budget": {"n_trials": 6, "parallelism": 2},
    "seed": 3,
}


def test_mobilenet_with_pruning_and_quantization_end_to_end(server) -> None:
    with Client(server.url) as client:
        job = client.wait(client.submit(SPEC).id, timeout=500, poll_interval=0.5)
        assert job.status == "succeeded", f"{job.error}\n{server.log_tail()}"
        trials = client.trials(job.id).data
        assert len(trials) == 6 and all(t.state == "complete" for t in trials)
        for t in trials:
            applied = t.user_attrs["compression"]
            assert applied["prune"] == t.params["prune"]
            assert applied["quantization"] == t.params["quantization"]
            assert t.params["arch"] == "mobilenet"
            assert t.metrics["flops"] > 0 and 0 <= t.metrics["sparsity"] < 1
            assert 0 <= t.values["accuracy"] <= 1

            sha = t.user_attrs["artifact"]["sha256"]
            response = httpx.get(f"{server.url}/api/v1/jobs/{job.id}/trials/{t.number}/artifact",
                                 headers=auth_headers(), timeout=30)
            assert response.headers["x-artifact-sha256"] == sha
            assert response.status_code == 200
            assert len(response.content) == t.values["size_bytes"]
            model = onnx.load_from_string(response.content)
            ops = {node.op_type for node in model.graph.node}
            assert ("QuantizeLinear" in ops) == (t.params["quantization"] == "int8-static")
            check_runs(response.content)
        # With this seed, NSGA-II's random first generation tries every knob value.
        assert {t.params["quantization"] for t in trials} == {"fp32", "int8-static"}
        assert {t.params["prune"] for t in trials} == {"none", "channel"}


def check_runs(model_bytes: bytes) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 1, 8, 8), np.float32)})
    assert out.shape == (1, 10) and np.isfinite(out).all()
