"""What an ONNX model from outside must be before anything opens it with onnxruntime: one
self-contained file (no tensor names a file to read) of standard operators, and valid ONNX.

A tensor stored "externally" names a file that onnxruntime reads when it builds the session,
relative to the model's directory (or to the working directory, for a model given as bytes);
an operator of a node can then quote the bytes it read in its error (a `Reshape` to a shape
read from the file), and the error would become the probe's failure reason. Only operator
domains onnxruntime implements itself run: a model cannot ask for a custom-op library (only
the session's own code registers one, and ours registers none), and refusing other domains
keeps it from naming one that an install happens to carry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgetune.errors import InvalidSpecError, MissingDependencyError

if TYPE_CHECKING:
    from onnx import GraphProto, ModelProto

__all__ = ["STANDARD_DOMAINS", "check_onnx_model"]

#: The operator domains a checked model may use: ONNX's own ("" and its alias "ai.onnx"), its
#: classical-ML operators, and onnxruntime's built-in contrib operators (quantized exports).
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
_MESSAGE_CHARS = 200


def check_onnx_model(data: bytes, *, validate: bool = True) -> ModelProto:
    """The parsed model, once it is self-contained ONNX of standard operator domains
    (functions the model defines itself count as standard) and, with `validate`, passes
    onnx's checker. It is parsed and checked, never run, and nothing it names is opened.
    Raises `InvalidSpecError` naming `model` and the reason, or `MissingDependencyError`
    without the onnx package.

    A runtime about to load a model checks without `validate`: onnx's checker is stricter
    than onnxruntime (it wants nodes sorted, which our own fp16 exports are not), and what
    keeps the runtime safe is the rest."""
    try:
        import onnx
    except ImportError as e:
        raise MissingDependencyError("onnx", "onnx") from e
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # protobuf's errors: not a model
        raise _invalid(e) from None
    # Before the checker: it looks for an external tensor's file, relative to the process's
    # working directory.
    _check_self_contained(model)
    _check_domains(model)
    if not validate:
        return model
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise _invalid(e) from None
    return model


def _invalid(e: BaseException) -> InvalidSpecError:
    first = (str(e).strip().splitlines() or [""])[0]
    message = "".join(c for c in first if c.isprintable())[:_MESSAGE_CHARS]
    return InvalidSpecError("model", f"The file is not a valid ONNX model ({type(e).__name__}: "
                                     f"{message}).")


def _graphs(model: ModelProto) -> list[GraphProto]:
    """Every graph of the model: the main one, its nodes' subgraphs (Loop, If, Scan bodies),
    and those of training info and of the model's functions, at any depth."""
    pending = [model.graph]
    for info in model.training_info:
        pending.extend([info.initialization, info.algorithm])
    found = []
    nodes = [node for function in model.functions for node in function.node]
    while pending or nodes:
        if pending:
            graph = pending.pop()
            found.append(graph)
            nodes.extend(graph.node)
            continue
        node = nodes.pop()
        for attribute in node.attribute:
            pending.extend([attribute.g] if attribute.HasField("g") else [])
            pending.extend(attribute.graphs)
    return found


def _tensors(model: ModelProto) -> list[Any]:
    """Every tensor stored in the model, sparse ones as their values and indices."""
    tensors: list[Any] = []
    sparse: list[Any] = []
    nodes = [node for function in model.functions for node in function.node]
    for graph in _graphs(model):
        tensors.extend(graph.initializer)
        sparse.extend(graph.sparse_initializer)
        nodes.extend(graph.node)
    for node in nodes:
        for attribute in node.attribute:
            tensors.extend([attribute.t] if attribute.HasField("t") else [])
            tensors.extend(attribute.tensors)
            sparse.extend([attribute.sparse_tensor] if attribute.HasField("sparse_tensor")
                          else [])
            sparse.extend(attribute.sparse_tensors)
    for tensor in sparse:
        tensors.extend([tensor.values, tensor.indices])
    return tensors


def _check_self_contained(model: ModelProto) -> None:
    from onnx import TensorProto

    for tensor in _tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            raise InvalidSpecError(
                "model", f"The ONNX model keeps tensor {_shown(tensor.name)} in an external "
                         "file; a model must be one self-contained file.")


def _check_domains(model: ModelProto) -> None:
    own = {function.domain for function in model.functions}
    allowed = STANDARD_DOMAINS | own
    # The domains nodes use: an opset the model merely imports (quantization tools import
    # "ai.onnx.training") runs nothing.
    used = [node.domain for graph in _graphs(model) for node in graph.node]
    used += [node.domain for function in model.functions for node in function.node]
    for domain in used:
        if domain not in allowed:
            raise InvalidSpecError(
                "model", f"The ONNX model uses operator domain {_shown(domain)}; only "
                         f"{', '.join(repr(d) for d in sorted(STANDARD_DOMAINS))} run (custom "
                         "operators are not loaded).")


def _shown(text: str) -> str:
    return repr("".join(c for c in text if c.isprintable())[:64])
