"""The `Runtime` interface: how a latency measurement loads and runs one exported model."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from edgetune.errors import EdgetuneError

if TYPE_CHECKING:
    import numpy as np

#: What a measurement can compute on: the host CPU, or the first CUDA GPU.
DEVICES = ("cpu", "cuda")


class AcceleratorUnavailableError(EdgetuneError, ValueError):
    """A measurement asked for a device (`device="cuda"`) that this machine or install cannot
    compute on; the message names the option and what is missing. Fix the request (measure on
    `"cpu"`) or the machine, not the model."""


class Runtime(abc.ABC):
    """Runs an exported artifact for latency measurement.

    The measurer creates an instance with the device to compute on (`device`, one of the
    class's `devices`; `"cpu"` unless asked), then calls, in order: `load(path, threads=...)`
    once, then `run_once(inputs)` for every warm-up run and every timed repeat (always with the
    same array), then `close()` once, also when `load` or a run failed. `run_once` must return
    only when the inference has finished, on an accelerator too (synchronize with it), so that
    its wall time is the model's latency. `load` raises `AcceleratorUnavailableError` when the
    device is not there: a silent fall back to the CPU would report the wrong device's latency.
    Implementations import their engine inside `load`, so listing runtimes needs no engine.
    """

    #: The name used to pick this runtime, e.g. in `get_runtime`.
    name: ClassVar[str]
    #: The `edgetune.trainers.export` format this runtime loads: "onnx" or "torchscript".
    artifact_format: ClassVar[str]
    #: The devices (of `DEVICES`) this runtime can compute on.
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(self, *, device: str = "cpu") -> None:
        if device not in self.devices:
            raise ValueError(
                f"The value of `device` is {device!r}, but must be one of "
                f"{', '.join(map(repr, self.devices))} for runtime {self.name!r}."
            )
        self.device = device

    @abc.abstractmethod
    def load(self, path: Path, *, threads: int) -> None:
        """Open a fresh session for the artifact at `path` on `device`; host-side work runs on
        `threads` threads."""

    @abc.abstractmethod
    def run_once(self, inputs: np.ndarray) -> None:
        """Run one synchronous inference on `inputs` and discard the output."""

    def close(self) -> None:
        """Release the session and undo any process-wide setting `load` changed."""


def torch_sees_cuda() -> bool:
    """Whether torch is installed and sees a CUDA GPU (a broken driver counts as none)."""
    try:
        import torch
    except ImportError:
        return False
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken driver means no GPU to measure on, not a crash
        return False
