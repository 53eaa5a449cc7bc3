"""Tests for exporting trained models as content-addressed artifacts."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgetune.errors import MissingDependencyError
from edgetune.trainers.export import Artifact, count_params, export_model

FORMATS = ["onnx", "torchscript"]
EXTENSIONS = {"onnx": "onnx", "torchscript": "pt"}


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


@pytest.fixture
def model() -> nn.Module:
    return tiny_model()


@pytest.fixture
def example_input() -> torch.Tensor:
    return torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _run_artifact(artifact: Artifact, x: torch.Tensor) -> np.ndarray:
    if artifact.format == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
        (out,) = session.run(["output"], {"input": x.numpy()})
        return np.asarray(out)
    loaded = torch.jit.load(str(artifact.path), map_location="cpu")
    with torch.inference_mode():
        return loaded(x).numpy()


@pytest.mark.parametrize("fmt", FORMATS)
def test_artifact_is_named_by_its_hash(
    fmt: str, model: nn.Module, example_input: torch.Tensor, tmp_path: Path
) -> None:
    artifact = export_model(model, example_input, tmp_path / "artifacts", format=fmt)

    data = artifact.path.read_bytes()
    assert artifact.format == fmt
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert artifact.path == tmp_path / "artifacts" / f"{artifact.sha256}.{EXTENSIONS[fmt]}"
    assert artifact.size_bytes == len(data) == artifact.path.stat().st_size
    # Nothing else is left behind: no temp files.
    assert os.listdir(tmp_path / "artifacts") == [artifact.path.name]


@pytest.mark.parametrize("fmt", FORMATS)
def test_artifact_computes_what_the_model_computes(
    fmt: str, model: nn.Module, example_input: torch.Tensor, tmp_path: Path
) -> None:
    artifact = export_model(model, example_input, tmp_path, format=fmt)
    # A different input than the example, so a trace that froze its input would fail.
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x).numpy()

    np.testing.assert_allclose(_run_artifact(artifact, x), expected, rtol=1e-5, atol=1e-6)


def test_exporting_twice_gives_the_same_artifact(
    model: nn.Module, example_input: torch.Tensor, tmp_path: Path
) -> None:
    first = export_model(model, example_input, tmp_path, format="onnx")
    mtime = first.path.stat().st_mtime_ns
    second = export_model(tiny_model(), example_input, tmp_path, format="onnx")

    assert second == first
    assert first.path.stat().st_mtime_ns == mtime  # reused, not rewritten
    assert os.listdir(tmp_path) == [first.path.name]


def test_a_damaged_artifact_is_rewritten(
    model: nn.Module, example_input: torch.Tensor, tmp_path: Path
) -> None:
    first = export_model(model, example_input, tmp_path, format="onnx")
    first.path.write_bytes(b"torn")

    second = export_model(model, example_input, tmp_path, format="onnx")

    assert second == first
    assert hashlib.sha256(second.path.read_bytes()).hexdigest() == second.sha256


@pytest.mark.slow
def test_torchscript_export_is_reproducible_across_processes(tmp_path: Path) -> None:
    # Within one process torch mangles the class names of a re-traced module, so the
    # TorchScript bytes only repeat in a fresh process, as each trial has.
    script = textwrap.dedent(
        """
        import sys, torch
        from torch import nn
        from edgetune.trainers.export import export_model
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        x = torch.ones(1, 1, 8, 8)
        print(export_model(model, x, sys.argv[1], format="torchscript").sha256)
        """
    )
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    hashes = {
        subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
            cwd=root,
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(hashes) == 1
    assert len(os.listdir(tmp_path)) == 1


def test_export_keeps_the_training_mode(
    model: nn.Module, example_input: torch.Tensor, tmp_path: Path
) -> None:
    model.train()
    export_model(model, example_input, tmp_path, format="onnx")
    assert model.training


def test_unknown_format_is_refused(
    model: nn.Module, example_input: torch.Tensor, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"'tflite'.*'onnx', 'torchscript'"):
        export_model(model, example_input, tmp_path, format="tflite")
    assert not any(tmp_path.iterdir())


def test_missing_onnx_names_the_extra(
    model: nn.Module, example_input: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnx" else find_spec(name, *a),
    )
    with pytest.raises(MissingDependencyError, match=r"edgetune\[onnx\]"):
        export_model(model, example_input, tmp_path, format="onnx")


def test_count_params(model: nn.Module) -> None:
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    assert count_params(model) == (4 * 1 * 3 * 3 + 4) + (3 * 144 + 3)
