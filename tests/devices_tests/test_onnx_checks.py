"""ONNX models from outside are checked before onnxruntime opens them: a tensor that names a
file (dense, sparse, in an attribute or a subgraph) or an operator domain outside the standard
ones is refused, by the upload check and by the runtime itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetune.devices.latency import MeasureConfig, measure_here
from edgetune.devices.onnx_checks import check_onnx_model
from edgetune.devices.runtimes import get_runtime
from edgetune.errors import InvalidSpecError, TrialFailed

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from hostile_models import INPUT, custom_domain, endless_loop, file_reader, relu  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

#: Two int64 numbers: a shape the reader model reshapes its input to, if it read the file.
SECRET = np.array([2, 2], dtype=np.int64).tobytes()


def _model_with_subgraph_reading(location: str) -> bytes:
    """An `If` whose branch holds a `Constant` whose tensor names a file."""
    constant = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[1, *INPUT],
                           data_location=TensorProto.EXTERNAL)
    constant.external_data.add(key="location", value=location)
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["out"], value=constant)], "branch", [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, *INPUT])])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["cond"], value=helper.make_tensor(
            "b", TensorProto.BOOL, [], [True])),
         helper.make_node("If", ["cond"], ["output"], then_branch=branch, else_branch=branch)],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, *INPUT])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, *INPUT])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.mark.parametrize("model", [
    pytest.param(lambda: file_reader("secret.bin"), id="sparse-initializer"),
    pytest.param(lambda: file_reader("secret.bin", sparse=False), id="initializer"),
    pytest.param(lambda: _model_with_subgraph_reading("secret.bin"), id="subgraph-attribute"),
])
def test_a_tensor_that_names_a_file_is_refused_before_anything_opens_it(
    model: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file exists where the checker would look (the working directory): refused all
    # the same, and by the model's own check, not by a missing file.
    (tmp_path / "secret.bin").write_bytes(SECRET)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidSpecError, match="external file") as raised:
        check_onnx_model(model())  # type: ignore[operator]
    assert raised.value.field == "model"


def test_onnxruntime_reads_a_sparse_external_tensor_but_our_runtime_refuses_it(
    tmp_path: Path
) -> None:
    (tmp_path / "secret.bin").write_bytes(SECRET)
    path = tmp_path / "reader.onnx"
    path.write_bytes(file_reader("secret.bin"))
    # What an unchecked session does: the file's numbers become the output's shape.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = session.run(None, {"input": np.zeros((1, *INPUT), dtype=np.float32)})[0]
    assert output.shape == (2, 2)

    runtime = get_runtime("onnxruntime")
    with pytest.raises(InvalidSpecError, match="external file"):
        runtime.load(path, threads=1)
    with pytest.raises(TrialFailed, match="external file") as raised:
        measure_here(path, runtime="onnxruntime", input_shape=[1, *INPUT],
                     config=MeasureConfig(warmup=0, min_repeats=1, min_time_s=0,
                                          timeout_s=None, memory_bytes=None))
    assert "2, 2" not in str(raised.value)


def test_operator_domains_outside_the_standard_ones_are_refused() -> None:
    with pytest.raises(InvalidSpecError, match=r"operator domain 'com\.example\.evil'"):
        check_onnx_model(custom_domain())
    # onnxruntime's own contrib operators are standard.
    check_onnx_model(custom_domain("com.microsoft").replace(b"Evil", b"Gelu"))


def test_a_function_the_model_defines_is_its_own_domain() -> None:
    function = helper.make_function(
        "local.fn", "Double", ["x"], ["y"], [helper.make_node("Add", ["x", "x"], ["y"])],
        [helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("Double", ["input"], ["output"], domain="local.fn")], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, *INPUT])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, *INPUT])])
    model = helper.make_model(graph, functions=[function], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("local.fn", 1)])
    model.ir_version = 8
    check_onnx_model(model.SerializeToString())


def test_valid_models_pass_and_garbage_is_named() -> None:
    assert check_onnx_model(relu()).graph.node[0].op_type == "Relu"
    check_onnx_model(endless_loop())  # valid ONNX: its limits are the measurer's
    with pytest.raises(InvalidSpecError, match="not a valid ONNX model"):
        check_onnx_model(b"\x00" * 64 + b"not a model")


@pytest.mark.parametrize("mode", ["fp32", "fp16", "int8-dynamic", "int8-static"])
def test_the_services_own_exports_pass_the_runtimes_check_in_every_mode(
    mode: str, tmp_path: Path
) -> None:
    # onnx's checker refuses our fp16 exports (nodes unsorted) and quantization imports the
    # "ai.onnx.training" opset: the runtime checks what keeps it safe, no more.
    torch = pytest.importorskip("torch")
    from edgetune.trainers.compression import quantize_onnx
    from edgetune.trainers.export import _to_onnx

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 6 * 6, 3)).eval()
    source, exported = tmp_path / "source.onnx", tmp_path / f"{mode}.onnx"
    source.write_bytes(_to_onnx(model, torch.zeros(1, 1, 8, 8)))
    calibration = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    quantize_onnx(source, exported, mode, calibration)
    result = measure_here(exported, runtime="onnxruntime", input_shape=(1, 1, 8, 8),
                          config=MeasureConfig(warmup=0, min_repeats=2, min_time_s=0,
                                               timeout_s=None, memory_bytes=None))
    assert result.n >= 2
