"""Latency predictors: a model of one device's latency fitted on its probe history, from features
of the exported ONNX graph (operator counts, FLOPs, parameters, tensor sizes, and the same per
kind of kernel), to screen candidates before measuring them."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MIN_PROBES",
    "PREDICTOR_KINDS",
    "LatencyPredictor",
    "PredictorCache",
    "graph_features",
]

#: Fewer measurements than this fit nothing worth reporting (nor cross-validate in 4 folds).
MIN_PROBES = 8
#: `additive`: latency as a fixed cost plus a non-negative sum of per-kernel costs (counts,
#: MACs and tensor sizes per kind of kernel), fitted for relative error; `log-ridge`: ridge on
#: log features to log latency.
PREDICTOR_KINDS = ("additive", "log-ridge")
_FORMAT_VERSION = 1
#: Weight input of the convolution-like and matrix-product-like operators (their data input is
#: input 0), so that quantized graphs count their work as fp32 ones do.
_CONV_WEIGHT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_MATMUL_INPUTS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}
_GEMM = ("Gemm",)
#: Features that describe the work, as opposed to operator counts (`op:*`).
_WORK_FEATURES = (
    "conv_macs", "dwconv_macs", "matmul_macs", "macs", "flops", "params", "activations",
    "input_size", "conv_traffic", "dwconv_traffic", "nodes", "kernels",
)
#: Operators that cost nothing at run time: graph optimizers fold or drop them.
_FREE_OPS = frozenset({"Constant", "Identity"})
#: The widest common SIMD block in fp32 lanes (AVX-512; onnxruntime's NCHWc layout): a kernel
#: computes on channels rounded up to it, and a tensor whose channels are not a multiple of it
#: leaves the blocked layout (a reorder). A device with narrower vectors puts its weight on the
#: unpadded features instead.
_SIMD_CHANNELS = 16
#: Of the features, those the additive model fits: each is work whose time adds up. The
#: graph-wide sums stay beside the per-kernel ones for callers that bring only those.
_ADDITIVE_PREFIXES = ("op:", "op_out:", "kernel:")
_ADDITIVE_FEATURES = ("kernels", "conv_macs", "dwconv_macs", "matmul_macs", "activations",
                      "conv_traffic", "dwconv_traffic", "params")


#: The most operators a graph may have for its features to be read: shape inference and the
#: walk over the nodes cost time in proportion (a graph of 31 MB took 25 s).
MAX_GRAPH_NODES = 20_000


def graph_features(onnx_path: str | Path, *, max_bytes: int | None = None) -> dict[str, float]:
    """What the ONNX model at `onnx_path` computes, as numbers a latency model can use.

    `op:<type>` counts each operator type; `conv_macs`, `dwconv_macs` (depthwise convolutions:
    one input channel per group) and `matmul_macs` (Gemm, MatMul and their quantized kinds)
    count multiply-accumulates from the weight and output shapes, `macs` their sum and
    `flops` twice it; `params` counts initializer elements, `activations` the elements of
    every node output, `input_size` those of the graph inputs, `conv_traffic` and
    `dwconv_traffic` the elements a convolution reads and writes (input, weight, output), and
    `nodes` the operators.

    Kernel-level features, as nn-Meter predicts latency per kernel and sums: `kernels` counts
    the operators that run (not `Constant` or `Identity`), each one a fixed dispatch cost;
    `kernel:<kind>:count`, `:macs`, `:in` (input elements) and `:out` (output elements) per
    kind of convolution (`conv` k x k, `pwconv` 1 x 1, `dwconv` depthwise, `fcconv` on a 1 x 1
    map, as in squeeze-excitation, which is a matrix-vector product), the same
    MACs and outputs with channels rounded up to the SIMD block (`:macs_c16`, `:out_c16`),
    `kernel:unaligned_c16:count` and `:elements` for convolution outputs whose channels are
    not a multiple of it, `kernel:matmul:count` and `:macs` for Gemm and MatMul, and
    `op_out:<type>` the output elements of every other operator type.

    Shapes come from ONNX shape inference, so the graph's input shape must be static (our
    exports fix it). Raises `ValueError` for a file ONNX cannot read, one over `max_bytes`
    (checked before reading it) and one of more than `MAX_GRAPH_NODES` operators (checked
    before shape inference).
    """
    import onnx

    name = Path(onnx_path).name
    if max_bytes is not None and (size := Path(onnx_path).stat().st_size) > max_bytes:
        raise ValueError(f"{name} has {size} bytes, over the {max_bytes} bytes whose features "
                         "are read (EDGETUNE_PREDICTOR_MAX_GRAPH_BYTES)")
    try:
        # An uploaded model's tensors may name files: the features need shapes, not data.
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # onnx raises its own kinds, or protobuf's DecodeError
        raise ValueError(f"cannot read {name} as ONNX: {e}") from e
    if len(model.graph.node) > MAX_GRAPH_NODES:
        raise ValueError(f"{name} has {len(model.graph.node)} operators, over the "
                         f"{MAX_GRAPH_NODES} whose features are read")
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as e:
        raise ValueError(f"cannot infer the shapes of {name}: {e}") from e
    graph = model.graph
    shapes: dict[str, list[int]] = {}
    initializers = {init.name for init in graph.initializer}
    for init in graph.initializer:
        shapes[init.name] = [int(d) for d in init.dims]
    for info in (*graph.input, *graph.value_info, *graph.output):
        dims = info.type.tensor_type.shape.dim
        if info.type.tensor_type.HasField("shape"):
            shapes.setdefault(info.name, [int(d.dim_value) if d.HasField("dim_value") else 0
                                          for d in dims])

    features: dict[str, float] = dict.fromkeys(_WORK_FEATURES, 0.0)
    features["params"] = float(sum(_numel(shapes[name]) for name in initializers))
    features["input_size"] = float(sum(_numel(shapes.get(i.name, [])) for i in graph.input
                                       if i.name not in initializers))
    for node in graph.node:
        op = node.op_type
        features[f"op:{op}"] = features.get(f"op:{op}", 0.0) + 1
        features["nodes"] += 1
        features["activations"] += sum(_numel(shapes.get(out, [])) for out in node.output)
        if op not in _FREE_OPS:
            features["kernels"] += 1
        if op in _CONV_WEIGHT:
            weight = shapes.get(node.input[_CONV_WEIGHT[op]], [])
            out = shapes.get(node.output[0], [])
            if len(weight) < 3 or len(out) < 3:
                continue
            data = shapes.get(node.input[0], [])
            # Each output element takes (in channels per group) x (kernel) MACs.
            macs = _numel(out) * _numel(weight[1:])
            traffic = _numel(data) + _numel(weight) + _numel(out)
            depthwise = _attribute(node, "group", 1) > 1 and weight[1] == 1
            if depthwise:
                features["dwconv_macs"] += macs
                features["dwconv_traffic"] += traffic
            else:
                features["conv_macs"] += macs
                features["conv_traffic"] += traffic
            _add_conv_kernel(features, weight, out, data, depthwise=depthwise)
        elif op in _MATMUL_INPUTS or op in _GEMM:
            a = shapes.get(node.input[0], [])
            out = shapes.get(node.output[0], [])
            features["kernel:matmul:count"] = features.get("kernel:matmul:count", 0.0) + 1
            if not a or not out:
                continue
            # The shared dimension: A's last, or its first for a transposed Gemm input.
            k = a[0] if op in _GEMM and _attribute(node, "transA", 0) and len(a) == 2 else a[-1]
            features["matmul_macs"] += _numel(out) * k
            features["kernel:matmul:macs"] = (features.get("kernel:matmul:macs", 0.0)
                                              + _numel(out) * k)
        elif op not in _FREE_OPS and node.output:
            key = f"op_out:{op}"
            features[key] = features.get(key, 0.0) + _numel(shapes.get(node.output[0], []))
    features["macs"] = features["conv_macs"] + features["dwconv_macs"] + features["matmul_macs"]
    features["flops"] = 2 * features["macs"]
    return features


def _add_conv_kernel(features: dict[str, float], weight: Sequence[int], out: Sequence[int],
                     data: Sequence[int], *, depthwise: bool) -> None:
    """Add one convolution's kernel-level features (see `graph_features`). The kinds are kept
    apart because a device runs them with different code at a different cost per MAC."""
    kernel_size = _numel(weight[2:])
    spatial = _numel(out[2:])
    if depthwise:
        kind = "dwconv"
    elif all(d == 1 for d in out[2:]):
        kind = "fcconv"
    elif kernel_size == 1:
        kind = "pwconv"
    else:
        kind = "conv"
    out_channels, in_per_group = weight[0], weight[1]
    padded_out = _round_up(out_channels, _SIMD_CHANNELS)
    # A depthwise kernel computes one padded channel per output; the others a padded block of
    # inputs for each padded output channel.
    padded_in = 1 if depthwise else _round_up(in_per_group, _SIMD_CHANNELS)
    values = {
        "count": 1, "macs": _numel(out) * _numel(weight[1:]), "in": _numel(data),
        "out": _numel(out), "macs_c16": out[0] * padded_out * padded_in * kernel_size * spatial,
        "out_c16": out[0] * padded_out * spatial,
    }
    for name, value in values.items():
        key = f"kernel:{kind}:{name}"
        features[key] = features.get(key, 0.0) + value
    if out_channels % _SIMD_CHANNELS:
        for name, value in (("count", 1), ("elements", _numel(out))):
            key = f"kernel:unaligned_c16:{name}"
            features[key] = features.get(key, 0.0) + value


def _round_up(n: int, block: int) -> int:
    return -(-n // block) * block


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 0


def _attribute(node: Any, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return default


class LatencyPredictor:
    """Predicts a device's p50 latency (ms) from `graph_features` (plus any numbers the caller
    adds, such as `threads`), fitted on that device's measurements.

    `additive` (the default) models latency as a fixed cost plus a non-negative weighted sum
    of the features whose time adds up on a device: the kernel-level ones of `graph_features`
    (per kind of convolution its count, MACs, SIMD-padded MACs and tensor sizes; the kernels
    that run; operator counts and outputs), fitted to minimise relative error. It is
    nn-Meter's sum of per-kernel latencies, with the costs per kernel kind learnt from whole
    models' measurements, and it extrapolates to larger models the way a device does.
    `log-ridge` fits log latency on all the features' logs; it follows curvature better but
    extrapolates worse. Unknown features at prediction time are ignored; features missing
    there count as 0.
    """

    def __init__(self, *, kind: str = "additive", alpha: float = 1.0) -> None:
        if kind not in PREDICTOR_KINDS:
            raise ValueError(f"The value of `kind` is {kind!r}, but must be one of "
                             f"{', '.join(map(repr, PREDICTOR_KINDS))}.")
        if not alpha >= 0:
            raise ValueError(f"The value of `alpha` is {alpha}, but must be >= 0.")
        self.kind = kind
        self.alpha = alpha
        self.feature_names: list[str] = []
        self._center = np.zeros(0)
        self._scale = np.ones(0)
        self._coef = np.zeros(0)
        self._intercept = 0.0
        self.n_train = 0

    @property
    def fitted(self) -> bool:
        return self.n_train > 0

    # --- fitting ---------------------------------------------------------------------------
    def fit(
        self, samples: Sequence[tuple[Mapping[str, float], float]], *,
        min_samples: int = MIN_PROBES,
    ) -> LatencyPredictor:
        """Fit on (features, p50_ms) pairs; raises `ValueError` for fewer than `min_samples`
        (`MIN_PROBES`; cross-validation fits its folds on fewer) or a latency that is not a
        positive finite number."""
        if len(samples) < min_samples:
            raise ValueError(f"A latency predictor needs at least {MIN_PROBES} measurements; "
                             f"there are {len(samples)}.")
        y = np.array([float(latency) for _, latency in samples])
        if not np.all(np.isfinite(y) & (y > 0)):
            raise ValueError("Every measured latency must be a positive finite number of ms.")
        names = sorted({name for features, _ in samples for name in features})
        if self.kind == "additive":
            names = [n for n in names
                     if n.startswith(_ADDITIVE_PREFIXES) or n in _ADDITIVE_FEATURES]
        x = _matrix([features for features, _ in samples], names)
        if self.kind == "additive":
            self._fit_additive(x, y)
        else:
            self._fit_log_ridge(x, y)
        self.feature_names = names
        self.n_train = len(samples)
        return self

    def _fit_additive(self, x: np.ndarray, y: np.ndarray) -> None:
        from scipy.optimize import lsq_linear, nnls

        # Scaled so that the non-negative fit treats features of any magnitude alike; centred
        # nowhere, since a feature at 0 must cost 0 ms. The fixed cost is one more
        # non-negative weight (on a column of ones), not a free intercept: with a feature that
        # is the same in every model (one stem, one classifier) a free intercept can go
        # negative, and clipping it afterwards would shift every prediction. Rows divided by
        # y make the squared error a squared relative error, the ±10% the predictor is judged
        # by.
        scale = np.abs(x).max(axis=0)
        scale[scale == 0] = 1.0
        design = np.hstack([x / scale, np.ones((len(y), 1))]) / y[:, None]
        target = np.ones(len(y))
        try:
            weights, _ = nnls(design, target, maxiter=50 * design.shape[1])
        except RuntimeError:  # out of iterations on a badly conditioned design: slower, sure
            weights = lsq_linear(design, target, bounds=(0.0, np.inf)).x
        self._center = np.zeros(x.shape[1])
        self._scale = scale
        self._coef = np.asarray(weights[:-1], dtype=float)
        self._intercept = float(weights[-1])

    def _fit_log_ridge(self, x: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import Ridge

        logs = np.log1p(np.maximum(x, 0))
        center = logs.mean(axis=0)
        scale = logs.std(axis=0)
        scale[scale == 0] = 1.0
        regression = Ridge(alpha=self.alpha)
        regression.fit((logs - center) / scale, np.log(y))
        self._center = center
        self._scale = scale
        self._coef = np.asarray(regression.coef_, dtype=float)
        self._intercept = float(regression.intercept_)

    # --- predicting ------------------------------------------------------------------------
    def predict(self, features: Mapping[str, float]) -> float:
        """The predicted p50 latency in ms of a model with these features."""
        return float(self.predict_many([features])[0])

    def predict_many(self, rows: Iterable[Mapping[str, float]]) -> np.ndarray:
        if not self.fitted:
            raise ValueError("This latency predictor is not fitted: call `fit` first.")
        x = _matrix(list(rows), self.feature_names)
        if self.kind == "additive":
            # Never below a hundredth of the fixed cost: a ratio needs a positive latency.
            linear = self._intercept + (x / self._scale) @ self._coef
            return np.maximum(linear, max(self._intercept, 1e-6) * 0.01)
        logs = (np.log1p(np.maximum(x, 0)) - self._center) / self._scale
        return np.asarray(np.exp(self._intercept + logs @ self._coef))

    # --- judging ---------------------------------------------------------------------------
    def evaluate(
        self, samples: Sequence[tuple[Mapping[str, float], float]], *, folds: int = 5,
        seed: int = 0,
    ) -> dict[str, float | int | None]:
        """Cross-validated error of this kind of predictor on `samples` (this one is left as
        it is): each sample predicted by a predictor fitted on the other folds. Returns `n`,
        `mape` (mean absolute percentage error, in %), `within_10pct` (the share of predictions
        within ±10% of the measurement), `spearman` (rank correlation; None when either side
        is constant) and `folds` (at most `folds`, fewer for few samples). Raises `ValueError`
        for fewer than `MIN_PROBES` samples."""
        n = len(samples)
        if n < MIN_PROBES:
            raise ValueError(f"A latency predictor needs at least {MIN_PROBES} measurements; "
                             f"there are {n}.")
        folds = max(2, min(folds, n // (MIN_PROBES // 2)))
        # A fold's predictor learns from fewer than MIN_PROBES when n is small: the error it
        # shows is then pessimistic, never flattering.
        order = np.random.default_rng(seed).permutation(n)
        predicted = np.zeros(n)
        for fold in np.array_split(order, folds):
            held = set(fold.tolist())
            train = [samples[i] for i in range(n) if i not in held]
            model = LatencyPredictor(kind=self.kind, alpha=self.alpha).fit(train, min_samples=2)
            predicted[fold] = model.predict_many([samples[i][0] for i in fold])
        measured = np.array([float(latency) for _, latency in samples])
        return {**prediction_error(measured, predicted), "folds": folds}

    # --- state -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fitted state as JSON-ready data; `from_dict` rebuilds the predictor."""
        return {
            "version": _FORMAT_VERSION, "kind": self.kind, "alpha": self.alpha,
            "feature_names": list(self.feature_names), "center": self._center.tolist(),
            "scale": self._scale.tolist(), "coef": self._coef.tolist(),
            "intercept": self._intercept, "n_train": self.n_train,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> LatencyPredictor:
        if state.get("version") != _FORMAT_VERSION:
            raise ValueError(f"Latency predictor state of version {state.get('version')!r}; "
                             f"this edgetune reads version {_FORMAT_VERSION}.")
        predictor = cls(kind=str(state["kind"]), alpha=float(state["alpha"]))
        names = [str(n) for n in state["feature_names"]]
        arrays = [np.asarray(state[key], dtype=float) for key in ("center", "scale", "coef")]
        if any(a.shape != (len(names),) for a in arrays):
            raise ValueError("Latency predictor state whose arrays do not match its features.")
        predictor.feature_names = names
        predictor._center, predictor._scale, predictor._coef = arrays
        predictor._intercept = float(state["intercept"])
        predictor.n_train = int(state["n_train"])
        return predictor


def prediction_error(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float | int | None]:
    """`n`, `mape` (%), `within_10pct` and `spearman` of predictions against measurements."""
    from scipy.stats import spearmanr

    measured = np.asarray(measured, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    relative = np.abs(predicted - measured) / measured
    rho: float | None = None
    if len(measured) > 1 and np.ptp(measured) > 0 and np.ptp(predicted) > 0:
        rho = float(spearmanr(measured, predicted).statistic)
    return {"n": len(measured), "mape": float(100 * relative.mean()),
            "within_10pct": float(np.mean(relative <= 0.10)), "spearman": rho}


def _matrix(rows: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    return np.array([[float(row.get(name, 0.0)) for name in names] for row in rows],
                    dtype=float).reshape(len(rows), len(names))


@dataclass
class _Fitted:
    n_done: int
    value: Any


@dataclass
class PredictorCache:
    """The server's memory of fitted predictors, per device, keyed by how many done probes the
    device had (a new measurement refits), and of graph features, per artifact sha256 (an
    artifact never changes). Safe to share between request threads."""

    max_artifacts: int = 10_000
    #: Graphs over this many bytes are not read (`graph_features`' `max_bytes`).
    max_graph_bytes: int | None = None
    #: How a graph's features are read: `graph_features` in this process unless given (the
    #: API reads them in a child process).
    reader: Callable[[Path], dict[str, float]] | None = None
    _fitted: dict[str, _Fitted] = field(default_factory=dict)
    _features: dict[str, dict[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fitted(self, device_id: str, n_done: int) -> Any | None:
        with self._lock:
            entry = self._fitted.get(device_id)
            return entry.value if entry is not None and entry.n_done == n_done else None

    def store(self, device_id: str, n_done: int, value: Any) -> None:
        with self._lock:
            self._fitted[device_id] = _Fitted(n_done, value)

    def features(self, sha256: str, path: Path) -> dict[str, float]:
        with self._lock:
            cached = self._features.get(sha256)
        if cached is not None:
            return dict(cached)
        computed = (self.reader(path) if self.reader is not None
                    else graph_features(path, max_bytes=self.max_graph_bytes))
        with self._lock:
            if len(self._features) >= self.max_artifacts:
                self._features.clear()
            self._features[sha256] = computed
        return dict(computed)
