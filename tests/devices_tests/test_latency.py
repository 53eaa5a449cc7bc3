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
from edgetune.devices.runtimes import (
    DEVICES,
    AcceleratorUnavailableError,
    OnnxRuntime,
    Runtime,
    TorchScriptRuntime,
)
from edgetune.errors import TrialFailed
from edgetune.testing.runtimes import RuntimeTestCase
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
        "device",
    }
    assert result.device == "cpu"


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_measure_latency_on_cuda(runtime: str, artifacts: dict[str, Path]) -> None:
    _skip_without_engine(runtime)
    if runtime == "onnxruntime":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            pytest.skip("needs onnxruntime-gpu")
    config = dataclasses.replace(FAST, device="cuda")
    result = measure_latency(
        artifacts[runtime], runtime=runtime, input_shape=INPUT_SHAPE, config=config
    )
    assert result.device == "cuda"
    assert 0 < result.p50_ms <= result.p90_ms


def test_the_default_device_is_the_cpu(artifacts: dict[str, Path]) -> None:
    assert MeasureConfig().device == "cpu"
    assert get_runtime("torchscript").device == "cpu"
    result = measure_latency(
        artifacts["torchscript"], runtime="torchscript", input_shape=INPUT_SHAPE, config=FAST
    )
    assert result.device == "cpu"


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_cuda_without_a_gpu_is_an_error_naming_the_option(
    runtime: str, artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _skip_without_engine(runtime)
    # As on a machine without a GPU, also where this suite runs on one.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if runtime == "onnxruntime":
        import onnxruntime

        # An onnxruntime-gpu install lists its CUDA provider whether or not a GPU is there.
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    # In this process: the monkeypatched view of the machine is this process's only.
    config = dataclasses.replace(FAST, device="cuda", timeout_s=None, memory_bytes=None)
    with pytest.raises(AcceleratorUnavailableError, match=r"`device` is 'cuda'.*no CUDA GPU"):
        measure_latency(artifacts[runtime], runtime=runtime, input_shape=INPUT_SHAPE,
                        config=config)


def test_onnxruntime_without_its_cuda_provider_names_the_package(
    artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _skip_without_engine("onnxruntime")
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    engine = OnnxRuntime(device="cuda")
    try:
        with pytest.raises(AcceleratorUnavailableError, match="onnxruntime-gpu"):
            engine.load(artifacts["onnxruntime"], threads=1)
    finally:
        engine.close()


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_onnxruntime_that_falls_back_to_the_cpu_is_an_error(
    artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _skip_without_engine("onnxruntime")
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider: the session would not fall back")
    # The checks pass, as with onnxruntime-gpu on a GPU machine, but the session cannot start
    # the CUDA provider and runs on the CPU: that must not pass for a GPU measurement.
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    engine = OnnxRuntime(device="cuda")
    try:
        with pytest.raises(AcceleratorUnavailableError, match="could not start"):
            engine.load(artifacts["onnxruntime"], threads=1)
    finally:
        engine.close()


def test_an_unknown_device_is_refused() -> None:
    assert DEVICES == ("cpu", "cuda")
    with pytest.raises(ValueError, match=r"`device` is 'tpu'.*'cpu', 'cuda'"):
        MeasureConfig(device="tpu")
    with pytest.raises(ValueError, match=r"`device` is 'tpu'"):
        get_runtime("onnxruntime", device="tpu")


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


# --- the guarded measurement: a child process with limits ------------------------------------
def _onnx_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(data)
    return path


def test_a_model_that_never_ends_is_killed_at_the_time_limit(tmp_path: Path) -> None:
    _skip_without_engine("onnxruntime")
    from hostile_models import INPUT, endless_loop, relu

    from edgetune.devices.measurer import MeasurementLimitExceeded

    config = dataclasses.replace(FAST, timeout_s=2.0)
    loop = _onnx_file(tmp_path, "loop", endless_loop())
    with pytest.raises(MeasurementLimitExceeded, match="time limit of 2 s"):
        measure_latency(loop, runtime="onnxruntime", input_shape=(1, *INPUT), config=config)
    # The killed child is replaced: the next model is measured.
    result = measure_latency(_onnx_file(tmp_path, "relu", relu()), runtime="onnxruntime",
                             input_shape=(1, *INPUT), config=config)
    assert result.n >= FAST.min_repeats


def test_a_model_over_the_memory_limit_fails_and_the_next_is_measured(tmp_path: Path) -> None:
    _skip_without_engine("onnxruntime")
    from hostile_models import INPUT, huge_constant, relu

    from edgetune.devices.measurer import MeasurementLimitExceeded

    config = dataclasses.replace(FAST, memory_bytes=1 << 30)
    huge = _onnx_file(tmp_path, "huge", huge_constant(8 << 30))
    with pytest.raises(MeasurementLimitExceeded, match="memory limit: 1,073,741,824 bytes"):
        measure_latency(huge, runtime="onnxruntime", input_shape=(1, *INPUT), config=config)
    result = measure_latency(_onnx_file(tmp_path, "relu", relu()), runtime="onnxruntime",
                             input_shape=(1, *INPUT), config=config)
    assert result.n >= FAST.min_repeats


def test_a_stop_request_kills_the_measurement(tmp_path: Path) -> None:
    _skip_without_engine("onnxruntime")
    import threading

    from hostile_models import INPUT, endless_loop

    from edgetune.devices.measurer import MeasurementStopped

    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    with pytest.raises(MeasurementStopped):
        measure_latency(_onnx_file(tmp_path, "loop", endless_loop()), runtime="onnxruntime",
                        input_shape=(1, *INPUT), config=dataclasses.replace(FAST, timeout_s=600),
                        stop=stop)


@pytest.mark.parametrize(("field", "value"), [("timeout_s", 0.0), ("memory_bytes", 1024)])
def test_bad_limits_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"`{field}` is {value}"):
        MeasureConfig(**{field: value})


def test_the_measuring_child_runs_under_its_limits_and_dumps_no_core(tmp_path: Path) -> None:
    _skip_without_engine("onnxruntime")
    from hostile_models import INPUT, relu

    from edgetune.devices.measurer import Measurer

    measurer = Measurer(memory_bytes=1 << 30)
    try:
        measurer.measure(_onnx_file(tmp_path, "relu", relu()), runtime="onnxruntime",
                         input_shape=(1, *INPUT), config=FAST, timeout_s=60)
        assert measurer._child is not None
        limits = Path(f"/proc/{measurer._child.pid}/limits").read_text().splitlines()
    finally:
        measurer.close()
    soft_and_hard = {line[:26].strip(): line[26:].split()[:2] for line in limits[1:]}
    # Hard limits too: nothing in the child raises them again.
    assert soft_and_hard["Max address space"] == [str(1 << 30)] * 2
    assert soft_and_hard["Max core file size"] == ["0", "0"]


class TestRuntimeContract(RuntimeTestCase):
    @pytest.fixture(params=sorted(RUNTIMES))
    def runtime_name(self, request: pytest.FixtureRequest) -> str:
        _skip_without_engine(request.param)
        name: str = request.param
        return name
