"""The `onnxruntime` runtime: ONNX artifacts on onnxruntime's CPU or CUDA execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgetune.devices.onnx_checks import check_onnx_model
from edgetune.devices.runtimes._base import AcceleratorUnavailableError, Runtime, torch_sees_cuda
from edgetune.errors import MissingDependencyError

if TYPE_CHECKING:
    import numpy as np

_CUDA_PROVIDER = "CUDAExecutionProvider"


class OnnxRuntime(Runtime):
    """Runs ONNX artifacts with one `onnxruntime.InferenceSession` per model.

    On `device="cpu"`, the CPU execution provider. On `device="cuda"`, the CUDA execution
    provider on GPU 0 (the `onnxruntime-gpu` package), with the CPU provider only for the
    operators CUDA lacks, as onnxruntime places them. `load` raises
    `AcceleratorUnavailableError` when the install has no CUDA provider or the machine no GPU,
    and also when the session came up without CUDA: onnxruntime falls back to the CPU with only
    a log line when the provider fails to start, and a CPU time reported as a GPU one would be
    wrong. On the GPU the input is bound there once (`IOBinding`) and the output stays there, so
    that a run times the model rather than host-device copies; each run synchronizes the bound
    outputs before returning.
    """

    name: ClassVar[str] = "onnxruntime"
    artifact_format: ClassVar[str] = "onnx"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    def __init__(self, *, device: str = "cpu") -> None:
        super().__init__(device=device)
        self._session: Any = None
        self._input_name = ""
        self._binding: Any = None
        # The measurer passes the same array every run: bind it (copy it to the GPU) once.
        self._bound: np.ndarray | None = None
        # Bound on the GPU; the binding does not own it, so it lives as long as the binding.
        self._input_value: Any = None

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
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.device == "cuda":
            self._check_cuda(ort)
            providers = [(_CUDA_PROVIDER, {"device_id": 0}), "CPUExecutionProvider"]
        # The bytes checked are the bytes loaded: no tensor in them names a file, and no
        # operator a library (an agent measures models its server was sent by anyone).
        model = path.read_bytes()
        check_onnx_model(model, validate=False)
        self._session = ort.InferenceSession(model, sess_options=options, providers=providers)
        if self.device == "cuda" and _CUDA_PROVIDER not in self._session.get_providers():
            raise AcceleratorUnavailableError(
                "The value of `device` is 'cuda', but onnxruntime could not start its CUDA "
                "execution provider (check the CUDA and cuDNN libraries onnxruntime-gpu "
                "needs); measure with device 'cpu' or fix the install."
            )
        # Read the name rather than assume "input", so artifacts from elsewhere work too.
        self._input_name = self._session.get_inputs()[0].name

    @staticmethod
    def _check_cuda(ort: Any) -> None:
        if _CUDA_PROVIDER not in ort.get_available_providers():
            raise AcceleratorUnavailableError(
                "The value of `device` is 'cuda', but this onnxruntime "
                f"({ort.__version__}) has no {_CUDA_PROVIDER} (providers: "
                f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu, or "
                "measure with device 'cpu'."
            )
        # onnxruntime-gpu lists its CUDA provider on a machine without a GPU as well.
        if not torch_sees_cuda():
            raise AcceleratorUnavailableError(
                "The value of `device` is 'cuda', but no CUDA GPU is visible here (torch sees "
                "none); measure with device 'cpu' or on a machine with a GPU."
            )

    def run_once(self, inputs: np.ndarray) -> None:
        if self._session is None:
            raise RuntimeError("OnnxRuntime.run_once called before load")
        if self.device == "cpu":
            self._session.run(None, {self._input_name: inputs})
            return
        if inputs is not self._bound:
            self._bind(inputs)
        self._session.run_with_iobinding(self._binding)
        # The run has queued its kernels on the provider's stream; wait until the outputs
        # exist, so that the wall time is the inference's.
        self._binding.synchronize_outputs()

    def _bind(self, inputs: np.ndarray) -> None:
        import onnxruntime as ort

        binding = self._session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(inputs, "cuda", 0)
        binding.bind_ortvalue_input(self._input_name, value)
        for output in self._session.get_outputs():
            binding.bind_output(output.name, "cuda", 0)
        binding.synchronize_inputs()
        self._binding, self._bound, self._input_value = binding, inputs, value

    def close(self) -> None:
        self._session = None
        self._binding = None
        self._bound = None
        self._input_value = None
