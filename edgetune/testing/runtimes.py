"""The runtime contract: every runtime of `edgetune.devices.runtimes.RUNTIMES` loads a tiny
exported model, runs it, and closes, through the `Runtime` interface the measurer calls.

Subclass `RuntimeTestCase` in a test module and give it a `runtime_name` fixture over
`RUNTIMES` (skipping a runtime whose engine is not installed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetune.devices.runtimes import (
    DEVICES,
    RUNTIMES,
    AcceleratorUnavailableError,
    get_runtime,
)
from edgetune.devices.runtimes._base import torch_sees_cuda

INPUT_SHAPE = (1, 1, 8, 8)


def export_tiny_model(directory: Path, artifact_format: str) -> Path:
    """A small CNN over `INPUT_SHAPE`, exported in `artifact_format`."""
    import torch
    from torch import nn

    from edgetune.trainers.export import export_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).eval()
    return export_model(model, torch.zeros(INPUT_SHAPE), directory, format=artifact_format).path


class RuntimeTestCase:
    """What every runtime keeps: it names its artifact format and devices (the CPU among
    them) and refuses others naming `device`; `load`, `run_once` (repeatedly, on one array)
    and `close` run in that order, leave torch's thread count as it was, and `close` is safe
    after a `load` that failed; asked for a GPU that is not there, `load` says so rather than
    measure the CPU."""

    @pytest.fixture
    def runtime_name(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def artifact(self, runtime_name: str, tmp_path: Path) -> Path:
        return export_tiny_model(tmp_path, RUNTIMES[runtime_name].artifact_format)

    def test_it_declares_its_format_and_devices(self, runtime_name: str) -> None:
        cls = RUNTIMES[runtime_name]
        assert cls.name == runtime_name
        assert cls.artifact_format in ("onnx", "torchscript")
        assert "cpu" in cls.devices and set(cls.devices) <= set(DEVICES)
        assert get_runtime(runtime_name).device == "cpu"
        with pytest.raises(ValueError, match="`device` is 'tpu'"):
            get_runtime(runtime_name, device="tpu")

    @pytest.mark.parametrize("threads", [1, 2])
    def test_load_run_close(self, runtime_name: str, artifact: Path, threads: int) -> None:
        import torch

        before = torch.get_num_threads()
        runtime = get_runtime(runtime_name)
        runtime.load(artifact, threads=threads)
        try:
            inputs = np.zeros(INPUT_SHAPE, dtype=np.float32)
            for _ in range(3):
                runtime.run_once(inputs)
        finally:
            runtime.close()
        assert torch.get_num_threads() == before

    def test_close_after_a_failed_load(self, runtime_name: str, tmp_path: Path) -> None:
        path = tmp_path / "corrupt"
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        runtime = get_runtime(runtime_name)
        with pytest.raises(Exception):  # noqa: B017 - each engine raises its own error
            runtime.load(path, threads=1)
        runtime.close()

    def test_a_missing_gpu_is_an_error(self, runtime_name: str, artifact: Path) -> None:
        if "cuda" not in RUNTIMES[runtime_name].devices:
            pytest.skip(f"{runtime_name} computes on the CPU only")
        if torch_sees_cuda():
            pytest.skip("this machine has a CUDA GPU")
        runtime = get_runtime(runtime_name, device="cuda")
        try:
            with pytest.raises(AcceleratorUnavailableError, match="`device` is 'cuda'"):
                runtime.load(artifact, threads=1)
        finally:
            runtime.close()
