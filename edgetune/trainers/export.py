"""Export a trained model as a content-addressed artifact: the file is named by its SHA-256."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgetune.errors import MissingDependencyError
from edgetune.storage.artifacts import ARTIFACT_FORMATS, artifact_path

__all__ = ["ARTIFACT_FORMATS", "Artifact", "count_params", "export_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Artifact:
    """An exported model on disk; `path` is `artifact_dir / f"{sha256}.{ext}"`."""

    sha256: str  # hex digest of the file bytes
    path: Path
    size_bytes: int
    format: str  # "onnx" | "torchscript"

    @property
    def runtime(self) -> str:
        """The runtime that loads this artifact."""
        return "onnxruntime" if self.format == "onnx" else "torchscript"


def export_model(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    artifact_dir: Path,
    *,
    format: str = "onnx",
    quantization: str = "fp32",
    calibration: np.ndarray | None = None,
) -> Artifact:
    """Export `model` traced on `example_input` into `artifact_dir`, named by its hash.

    The model is exported in eval mode on the CPU with the batch size of `example_input`
    fixed; its training mode is restored afterwards. Exporting a model whose bytes are
    already in `artifact_dir` reuses that file.

    ONNX bytes depend only on the model (and the torch version). TorchScript bytes also
    embed the example input, and torch mangles class names when the same module classes
    are traced twice in one process, so a TorchScript re-export within one process gets a
    new hash (a fresh process, such as a trial's, reproduces the first one).
    """
    if format not in ARTIFACT_FORMATS:
        raise ValueError(
            f"The value of `format` is {format!r}, but must be one of "
            f"{', '.join(repr(f) for f in ARTIFACT_FORMATS)}."
        )
    if format == "onnx" and importlib.util.find_spec("onnx") is None:
        raise MissingDependencyError("onnx", "onnx")
    if quantization != "fp32" and format != "onnx":
        raise ValueError(
            f"quantization {quantization!r} needs the onnx format; {format!r} is exported fp32"
        )

    cpu_model, cpu_input = _on_cpu(model, example_input)
    was_training = cpu_model.training
    cpu_model.eval()
    try:
        data = (
            _to_onnx(cpu_model, cpu_input)
            if format == "onnx"
            else _to_torchscript(cpu_model, cpu_input)
        )
    finally:
        cpu_model.train(was_training)
    if quantization != "fp32":
        data = _quantize(data, quantization, calibration)

    sha256 = hashlib.sha256(data).hexdigest()
    artifact_dir = Path(artifact_dir)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    path = artifact_path(artifact_dir, sha256, format)
    if _holds(path, sha256, len(data)):
        logger.debug("artifact %s already exported; reusing it", path.name)
    else:
        _write_atomically(path, data)
        logger.debug("exported %s (%d bytes)", path.name, len(data))
    return Artifact(sha256=sha256, path=path, size_bytes=len(data), format=format)


def count_params(model: torch.nn.Module) -> int:
    """Number of parameters in `model`, trainable or not; a shared parameter counts once."""
    return sum(p.numel() for p in model.parameters())


def _on_cpu(
    model: torch.nn.Module, example_input: torch.Tensor
) -> tuple[torch.nn.Module, torch.Tensor]:
    # A copy, so the caller's model stays on its device; CPU models are exported in place.
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type != "cpu" for t in tensors):
        model = copy.deepcopy(model).cpu()
    return model, example_input.detach().cpu()


def _to_onnx(model: torch.nn.Module, example_input: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    # The dynamo exporter needs onnxscript and is slower; the legacy one is enough for the
    # static graphs our trainers build, and warns that it is deprecated.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example_input,),
            # Annotated as a path only, but the legacy exporter writes to file objects too;
            # in memory, the bytes are hashed before anything touches the artifact dir.
            buffer,  # type: ignore[arg-type]
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            opset_version=17,
        )
    return buffer.getvalue()


def _quantize(onnx_bytes: bytes, mode: str, calibration: np.ndarray | None) -> bytes:
    from edgetune.trainers.compression import quantize_onnx

    with tempfile.TemporaryDirectory(prefix="edgetune-quantize-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / f"{mode}.onnx"
        src.write_bytes(onnx_bytes)
        quantize_onnx(src, dst, mode, calibration)
        return dst.read_bytes()


def _to_torchscript(model: torch.nn.Module, example_input: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    # torch.jit is deprecated in favour of torch.export, but is still the format the
    # TorchScript runtime loads without Python model code.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, (example_input,))
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _holds(path: Path, sha256: str, size_bytes: int) -> bool:
    """Whether `path` exists with exactly the expected content (a torn file does not count)."""
    try:
        if path.stat().st_size != size_bytes:
            return False
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except FileNotFoundError:
        return False


def _write_atomically(path: Path, data: bytes) -> None:
    # A temp file in the same directory, so os.replace is an atomic rename: concurrent
    # trials exporting the same model never see a half-written artifact.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file private (0600); artifacts are read by other services too.
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
