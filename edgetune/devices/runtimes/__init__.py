"""Runtimes that load and run exported models for latency measurement, found by name."""

from __future__ import annotations

import importlib.util

from edgetune.devices.runtimes._base import DEVICES, AcceleratorUnavailableError, Runtime
from edgetune.devices.runtimes._onnxruntime import OnnxRuntime
from edgetune.devices.runtimes._torchscript import TorchScriptRuntime

__all__ = [
    "DEVICES",
    "RUNTIMES",
    "AcceleratorUnavailableError",
    "OnnxRuntime",
    "Runtime",
    "TorchScriptRuntime",
    "default_runtime",
    "get_runtime",
]

#: Runtime name -> class.
RUNTIMES: dict[str, type[Runtime]] = {
    OnnxRuntime.name: OnnxRuntime,
    TorchScriptRuntime.name: TorchScriptRuntime,
}


def get_runtime(name: str, *, device: str = "cpu") -> Runtime:
    """A new instance of the runtime registered as `name`, computing on `device` (`"cpu"` or
    `"cuda"`, where the runtime supports it; whether the GPU is there is checked at `load`)."""
    if name not in RUNTIMES:
        raise ValueError(
            f"The value of `runtime` is {name!r}, but must be one of "
            f"{', '.join(repr(n) for n in RUNTIMES)}."
        )
    return RUNTIMES[name](device=device)


def default_runtime() -> str:
    """The runtime to use when none is named: onnxruntime when installed, else torchscript."""
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") is not None else "torchscript"
