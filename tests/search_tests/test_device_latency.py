"""`mode: predicted`: a trial's latency estimated by the device's predictor, never mixed with
measurements silently."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnx")
import torch
from pydantic import ValidationError
from torch import nn

from edgetune.devices import MeasureConfig
from edgetune.search.device_latency import (
    LatencyUnavailable,
    fit_device_predictor,
    measure_on_devices,
)
from edgetune.spec import JobSpec
from edgetune.storage import DeviceRepository, ProbeRepository, open_database
from edgetune.trainers.export import Artifact, export_model


def mlp(width: int, artifacts: Path) -> Artifact:
    torch.manual_seed(width)
    model = nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, 10)).eval()
    return export_model(model, torch.zeros(1, 32), artifacts, format="onnx")


def true_p50(width: int) -> float:
    """The device's 'latency': a fixed cost plus one per multiply-accumulate."""
    return 0.02 + 2e-5 * (32 * width + width * 10)


@pytest.fixture
def board(tmp_path: Path):
    db = open_database(f"sqlite:///{tmp_path / 'edgetune.db'}")
    device = DeviceRepository(db).register("board", runtimes=["onnxruntime"], hardware={},
                                           threads=1)
    yield db, device, tmp_path / "artifacts"
    db.dispose()


def measured_history(db, device, artifacts: Path, widths: list[int],
                     latency=true_p50) -> None:
    probes = ProbeRepository(db)
    for width in widths:
        artifact = mlp(width, artifacts)
        probe = probes.request(device.id, artifact_sha256=artifact.sha256, runtime="onnxruntime",
                               input_shape=[32], batch_size=1, threads=1, warmup=1,
                               min_repeats=1, min_time_s=0.0)
        assert probes.lease(device.id, "agent", lease_s=60) is not None
        p50 = latency(width)
        probes.complete(probe.id, "agent", {"p50_ms": p50, "p90_ms": p50, "mean_ms": p50,
                                            "std_ms": 0.0, "n": 10})


def test_a_predicted_latency_comes_from_the_device_history(board) -> None:
    db, device, artifacts = board
    measured_history(db, device, artifacts, [8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256])
    candidate = mlp(100, artifacts)
    result = measure_on_devices(
        ["board"], candidate, (1, 32), latency=MeasureConfig(), storage_url=db.url,
        timeout_s=1, predicted=["board"], tenant="default",
    )["board"]
    assert result["source"] == "predicted" and result["predictor"]["n_probes"] == 11
    assert result["p50_ms"] == pytest.approx(true_p50(100), rel=0.1)
    # Nothing was queued for it: predicting measures nothing.
    assert ProbeRepository(db).list(device_id=device.id)[1] == 11


WIDTHS = [8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320]


def test_the_device_predictor_is_the_kind_that_cross_validates_better(board) -> None:
    db, device, artifacts = board
    # Costs that add up (a fixed cost plus one per MAC): the additive model is exact.
    measured_history(db, device, artifacts, WIDTHS)
    assert fit_device_predictor(db, artifacts, device).predictor.kind == "additive"
    # A power law of the work, as caches and vector units make it: log-ridge fits it.
    other = DeviceRepository(db).register("other", runtimes=["onnxruntime"], hardware={},
                                          threads=1)
    measured_history(db, other, artifacts, WIDTHS, lambda w: 0.003 * (42 * w) ** 0.6)
    assert fit_device_predictor(db, artifacts, other).predictor.kind == "log-ridge"


def test_too_short_a_history_says_how_many_probes_it_needs(board) -> None:
    db, device, artifacts = board
    measured_history(db, device, artifacts, [8, 16, 24])
    with pytest.raises(LatencyUnavailable, match=r"has 3 measured probes .* at least 8"):
        measure_on_devices(["board"], mlp(100, artifacts), (1, 32), latency=MeasureConfig(),
                           storage_url=db.url, timeout_s=1, predicted=["board"],
                           tenant="default")


def test_predicted_latency_is_for_registered_devices_and_never_mixed_with_measured() -> None:
    base = {"name": "x", "objectives": [{"name": "accuracy"}]}
    with pytest.raises(ValidationError, match="for latency_ms on a registered device"):
        JobSpec.model_validate({**base, "objectives": [
            {"name": "latency_ms", "mode": "predicted"}]})  # the built-in local device
    with pytest.raises(ValidationError, match="predicted by an objective but measured"):
        JobSpec.model_validate({**base, "objectives": [
            {"name": "latency_ms", "device": "board", "mode": "predicted"}],
            "constraints": [{"metric": "latency_ms", "op": "<=", "bound": 5,
                             "device": "board"}]})
    spec = JobSpec.model_validate({**base, "objectives": [
        {"name": "accuracy"}, {"name": "latency_ms", "device": "board", "mode": "predicted"}]})
    assert spec.predicted_devices == ["board"] and spec.devices == ["board"]
