"""The `onnxruntime` runtime: ONNX artifacts on onnxruntime's CPU execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgetune.devices.runtimes._base import Runtime
from edgetune.errors import MissingDependencyError

if TYPE_CHECKING:
    import numpy as np


class OnnxRuntime(Runtime):
    """Runs ONNX artifacts with one `onnxruntime.InferenceSession` per model, on the CPU."""

    name: ClassVar[str] = "onnxruntime"
    artifact_format: ClassVar[str] = "onnx"

    def __init__(self) -> None:
        self._session: Any = None
        self._input_name = ""

    def load(self, path: Path, *, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise MissingDependencyError("onnxruntime", "onnx") from e

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # One model, one request at a time: parallelism across operators only adds noise.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        # Read the name rather than assume "input", so artifacts from elsewhere work too.
        self._input_name = self._session.get_inputs()[0].name

    def run_once(self, inputs: np.ndarray) -> None:
        if self._session is None:
            raise RuntimeError("OnnxRuntime.run_once called before load")
        self._session.run(None, {self._input_name: inputs})

    def close(self) -> None:
        self._session = None
