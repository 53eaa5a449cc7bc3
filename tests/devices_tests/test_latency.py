"""Tests for latency measurement and the runtime registry. No assertion depends on speed."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgetune.devices import (
    RUNTIMES,
    LatencyResult,
    MeasureConfig,
    default_runtime,
    get_runtime,
    measure_latency,
)
from edgetune.devices.runtimes import Runtime, TorchScriptRuntime
from edgetune.errors import TrialFailed
from edgetune.trainers.export import export_model

INPUT_SHAPE = (1, 1, 8, 8)
# Short, so the suite stays fast; min_time_s=0 lets min_repeats alone end the timing.
FAST = MeasureConfig(warmup=2, min_repeats=5, min_time_s=0.0, max_time_s=5.0)


def _skip_without_engine(runtime: str) -> None:
    if runtime == "onnxruntime":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    directory = tmp_path_factory.mktemp("artifacts")
    x = torch.randn(INPUT_SHAPE)
    found: dict[str, Path] = {}
    for name, cls in RUNTIMES.items():
        if cls.artifact_format == "onnx" and importlib.util.find_spec("onnx") is None:
            continue  # its tests skip
        found[name] = export_model(model, x, directory, format=cls.artifact_format).path
    return found


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
@pytest.mark.parametrize("threads", [1, 2])
def test_measure_latency(runtime: str, threads: int, artifacts: dict[str, Path]) -> None:
    _skip_without_engine(runtime)
    config = dataclasses.replace(FAST, threads=threads)

    result = measure_latency(
        artifacts[runtime], runtime=runtime, input_shape=INPUT_SHAPE, config=config
    )

    assert isinstance(result, LatencyResult)
    assert result.runtime == runtime
    assert result.threads == threads
    assert result.batch_size == 1
    assert result.n >= config.min_repeats
    assert 0 < result.p50_ms <= result.p90_ms
    assert result.mean_ms > 0
    assert result.std_ms >= 0
    assert result.as_dict()["p50_ms"] == result.p50_ms
    assert set(result.as_dict()) == {
        "runtime",
        "threads",
        "batch_size",
        "p50_ms",
        "p90_ms",
        "mean_ms",
        "std_ms",
        "n",
    }


def test_max_time_ends_timing_early(artifacts: dict[str, Path]) -> None:
    # min_repeats is out of reach within max_time_s; the floor of three samples still holds.
    config = MeasureConfig(warmup=0, min_repeats=10**9, min_time_s=0.0, max_time_s=1e-9)
    result = measure_latency(
        artifacts["torchscript"], runtime="torchscript", input_shape=INPUT_SHAPE, config=config
    )
    assert result.n == 3


def test_torchscript_restores_torch_threads(artifacts: dict[str, Path]) -> None:
    before = torch.get_num_threads()
    config = MeasureConfig(warmup=1, min_repeats=3, min_time_s=0.0, threads=before + 1)
    measure_latency(
        artifacts["torchscript"], runtime="torchscript", input_shape=INPUT_SHAPE, config=config
    )
    assert torch.get_num_threads() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torchscript_on_cuda(artifacts: dict[str, Path]) -> None:
    engine = TorchScriptRuntime(device="cuda")
    engine.load(artifacts["torchscript"], threads=1)
    try:
        inputs = np.zeros(INPUT_SHAPE, dtype=np.float32)
        engine.run_once(inputs)
        assert engine.device == "cuda"
        assert torch.cuda.memory_allocated() > 0
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("threads", 0),
        ("warmup", -1),
        ("min_repeats", 0),
        ("min_time_s", -0.1),
        ("min_time_s", float("nan")),
        ("max_time_s", 0.0),
    ],
)
def test_bad_config_names_the_field(field: str, value: float) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=f"`{field}` is {value}"):
        MeasureConfig(**kwargs)


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_corrupt_artifact_fails_the_trial(runtime: str, tmp_path: Path) -> None:
    _skip_without_engine(runtime)
    path = tmp_path / f"corrupt.{'onnx' if runtime == 'onnxruntime' else 'pt'}"
    path.write_bytes(np.random.default_rng(0).bytes(4096))

    with pytest.raises(TrialFailed, match=runtime) as excinfo:
        measure_latency(path, runtime=runtime, input_shape=INPUT_SHAPE, config=FAST)
    assert excinfo.value.__cause__ is not None


def test_wrong_input_shape_fails_the_trial(artifacts: dict[str, Path]) -> None:
    with pytest.raises(TrialFailed, match="torchscript"):
        measure_latency(
            artifacts["torchscript"], runtime="torchscript", input_shape=(1, 3, 8, 8), config=FAST
        )


@pytest.mark.parametrize("shape", [(), (0, 1, 8, 8)])
def test_bad_input_shape_is_refused(shape: tuple[int, ...], artifacts: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="`input_shape`"):
        measure_latency(artifacts["torchscript"], runtime="torchscript", input_shape=shape)


def test_unknown_runtime_is_refused(artifacts: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"'tflite'.*'onnxruntime', 'torchscript'"):
        measure_latency(artifacts["torchscript"], runtime="tflite", input_shape=INPUT_SHAPE)
    with pytest.raises(ValueError, match="tflite"):
        get_runtime("tflite")


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_registry(name: str) -> None:
    runtime = get_runtime(name)
    assert isinstance(runtime, Runtime)
    assert type(runtime).name == name
    assert type(runtime).artifact_format in {"onnx", "torchscript"}
    runtime.close()  # closing a runtime that never loaded is harmless


def test_default_runtime_is_registered() -> None:
    assert default_runtime() in RUNTIMES
