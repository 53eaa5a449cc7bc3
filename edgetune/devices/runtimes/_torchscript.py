"""The `torchscript` runtime: TorchScript artifacts on libtorch, on the CPU or a CUDA GPU."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgetune.devices.runtimes._base import AcceleratorUnavailableError, Runtime, torch_sees_cuda

if TYPE_CHECKING:
    import numpy as np


class TorchScriptRuntime(Runtime):
    """Runs TorchScript artifacts under `torch.inference_mode`.

    `device="cuda"` runs on the first GPU torch sees, and `load` raises
    `AcceleratorUnavailableError` when it sees none. On the GPU the input is copied there once,
    at the first run, and every run ends with `torch.cuda.synchronize()`: kernel launches are
    asynchronous, so without it the clock would stop when the last launch was queued rather
    than when the result exists. `torch.set_num_threads` is process-wide: `load` sets it and
    `close` restores it.
    """

    name: ClassVar[str] = "torchscript"
    artifact_format: ClassVar[str] = "torchscript"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    def __init__(self, *, device: str = "cpu") -> None:
        super().__init__(device=device)
        self._module: Any = None
        self._previous_threads: int | None = None
        # The measurer passes the same array every run; convert it (and copy it to the GPU)
        # once, so the timed runs measure the model and not the transfer.
        self._inputs: np.ndarray | None = None
        self._tensor: Any = None

    def load(self, path: Path, *, threads: int) -> None:
        import torch

        if self.device == "cuda" and not torch_sees_cuda():
            raise AcceleratorUnavailableError(
                "The value of `device` is 'cuda', but torch sees no CUDA GPU here "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
                "measure with device 'cpu' or on a machine with a GPU."
            )
        self._previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        # torch.jit is deprecated in favour of torch.export, but TorchScript artifacts remain
        # loadable without the model's Python code.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=self.device)
        module.eval()
        self._module = module

    def run_once(self, inputs: np.ndarray) -> None:
        import torch

        if self._module is None:
            raise RuntimeError("TorchScriptRuntime.run_once called before load")
        if inputs is not self._inputs:
            self._tensor = torch.from_numpy(inputs).to(self.device)
            self._inputs = inputs
        with torch.inference_mode():
            self._module(self._tensor)
        if self.device == "cuda":
            torch.cuda.synchronize()

    def close(self) -> None:
        self._module = None
        self._inputs = None
        self._tensor = None
        if self._previous_threads is not None:
            import torch

            torch.set_num_threads(self._previous_threads)
            self._previous_threads = None
