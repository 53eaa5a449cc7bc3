"""The predictor's graph reader: features read in a real child process, the caps and the
timeout turned into `ValueError` (the graph is left out of the fit), a slow child killed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetune.api.graph_reader import GraphReader
from edgetune.devices.predictor import graph_features


def matmuls(path: Path, n: int) -> Path:
    """A chain of `n` 64 x 64 MatMuls: n x 16 kB of weights, and n operators to infer."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(np.full((64, 64), 0.5, np.float32), f"w{i}")
               for i in range(n)]
    nodes = [helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"x{i + 1}"]) for i in range(n)]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info(f"x{n}", TensorProto.FLOAT, [1, 64])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def test_features_come_from_the_child_as_in_process(tmp_path: Path) -> None:
    small = matmuls(tmp_path / "small.onnx", 3)
    reader = GraphReader(max_bytes=1_000_000, timeout_s=60)
    try:
        assert reader(small) == graph_features(small)
        with pytest.raises(ValueError, match="EDGETUNE_PREDICTOR_MAX_GRAPH_BYTES"):
            reader(matmuls(tmp_path / "big.onnx", 80))  # 1.3 MB
        with pytest.raises(ValueError, match="No such file"):
            reader(tmp_path / "gone.onnx")
        assert reader(small)["matmul_macs"] == 3 * 64 * 64  # the child still answers
    finally:
        reader.close()


def test_a_graph_past_the_timeout_kills_the_child(tmp_path: Path) -> None:
    slow = matmuls(tmp_path / "slow.onnx", 2000)
    reader = GraphReader(max_bytes=None, timeout_s=0.01)  # less than starting the child takes
    try:
        with pytest.raises(ValueError, match=r"took over 0\.01 s"):
            reader(slow)
        assert reader._child is None  # killed, not left reading
    finally:
        reader.close()
