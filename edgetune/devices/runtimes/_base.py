"""The `Runtime` interface: how a latency measurement loads and runs one exported model."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np


class Runtime(abc.ABC):
    """Runs an exported artifact for latency measurement.

    The measurer calls, in order: `load(path, threads=...)` once on a fresh instance, then
    `run_once(inputs)` for every warm-up run and every timed repeat (always with the same
    array), then `close()` once, also when `load` or a run failed. `run_once` must return
    only when the inference has finished, so that its wall time is the model's latency.
    Implementations import their engine inside `load`, so listing runtimes needs no engine.
    """

    #: The name used to pick this runtime, e.g. in `get_runtime`.
    name: ClassVar[str]
    #: The `edgetune.trainers.export` format this runtime loads: "onnx" or "torchscript".
    artifact_format: ClassVar[str]

    @abc.abstractmethod
    def load(self, path: Path, *, threads: int) -> None:
        """Open a fresh session for the artifact at `path`, computing on `threads` threads."""

    @abc.abstractmethod
    def run_once(self, inputs: np.ndarray) -> None:
        """Run one synchronous inference on `inputs` and discard the output."""

    def close(self) -> None:
        """Release the session and undo any process-wide setting `load` changed."""
