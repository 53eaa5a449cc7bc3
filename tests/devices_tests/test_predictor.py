"""Latency predictors: graph features (and kernel-level ones) of a known model, fits on synthetic
latencies with a known relation, cross-validated error, too little history, and the JSON round
trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgetune.devices.predictor import (
    MIN_PROBES,
    LatencyPredictor,
    graph_features,
    prediction_error,
)

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def conv_gemm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conv(3->8, 3x3, pad 1) on 3x6x6, a depthwise 3x3 conv, then Linear(288 -> 10)."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from edgetune.trainers.export import export_model

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 10),
    )
    return export_model(model, torch.randn(1, 3, 6, 6), tmp_path_factory.mktemp("model")).path


def test_features_of_a_known_model_match_a_hand_count(conv_gemm: Path) -> None:
    features = graph_features(conv_gemm)
    # Each output element of a conv takes (in channels per group) x kh x kw MACs.
    conv = (8 * 6 * 6) * (3 * 3 * 3)
    depthwise = (8 * 6 * 6) * (1 * 3 * 3)
    gemm = 10 * 288
    assert features["conv_macs"] == conv
    assert features["dwconv_macs"] == depthwise
    assert features["matmul_macs"] == gemm
    assert features["macs"] == conv + depthwise + gemm
    assert features["flops"] == 2 * (conv + depthwise + gemm)
    assert features["params"] == (8 * 3 * 9 + 8) + 8 * 9 + (288 * 10 + 10)
    assert features["input_size"] == 3 * 6 * 6
    assert features["op:Conv"] == 2 and features["op:Gemm"] == 1 and features["op:Relu"] == 1
    assert features["nodes"] == sum(v for k, v in features.items() if k.startswith("op:"))
    # Every node's outputs: conv 288, relu 288, depthwise 288, flatten 288, gemm 10.
    assert features["activations"] == 4 * 288 + 10
    assert features["dwconv_traffic"] == 288 + 72 + 288


def test_kernel_features_of_a_known_model_match_a_hand_count(conv_gemm: Path) -> None:
    f = graph_features(conv_gemm)
    # Constant and Identity nodes cost nothing at run time; every other node is a kernel.
    free = f.get("op:Constant", 0.0) + f.get("op:Identity", 0.0)
    assert f["kernels"] == f["nodes"] - free == 5
    # The 3x3 conv: 8 outputs of 6x6, each 3 x 3 x 3 MACs; 8 and 3 channels padded to 16.
    assert f["kernel:conv:count"] == 1
    assert f["kernel:conv:macs"] == f["conv_macs"] == (8 * 36) * 27
    assert f["kernel:conv:in"] == 3 * 36 and f["kernel:conv:out"] == 8 * 36
    assert f["kernel:conv:macs_c16"] == 16 * 16 * 9 * 36
    assert f["kernel:conv:out_c16"] == 16 * 36
    # The depthwise 3x3: one input channel per output, 8 padded to 16.
    assert f["kernel:dwconv:count"] == 1
    assert f["kernel:dwconv:macs"] == f["dwconv_macs"] == (8 * 36) * 9
    assert f["kernel:dwconv:macs_c16"] == 16 * 9 * 36
    assert "kernel:pwconv:count" not in f and "kernel:fcconv:count" not in f
    # Both convolutions write 8 channels, not a multiple of the 16-lane block.
    assert f["kernel:unaligned_c16:count"] == 2
    assert f["kernel:unaligned_c16:elements"] == 2 * 8 * 36
    assert f["kernel:matmul:count"] == 1 and f["kernel:matmul:macs"] == 10 * 288
    assert f["op_out:Relu"] == 288 and f["op_out:Flatten"] == 288


def test_pointwise_and_1x1_map_convolutions_are_kinds_of_their_own(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    from edgetune.trainers.export import export_model

    torch.manual_seed(0)
    # A 1x1 conv on a 4x4 map (pointwise: 32 aligned channels), then a squeeze-excitation
    # style conv on the pooled 1x1 map.
    model = nn.Sequential(nn.Conv2d(16, 32, 1), nn.AdaptiveAvgPool2d(1), nn.Conv2d(32, 16, 1))
    f = graph_features(export_model(model, torch.randn(1, 16, 4, 4), tmp_path).path)
    assert f["kernel:pwconv:count"] == 1 and f["kernel:pwconv:macs"] == 32 * 16 * 16
    assert f["kernel:pwconv:macs_c16"] == f["kernel:pwconv:macs"]  # already aligned
    assert f["kernel:fcconv:count"] == 1 and f["kernel:fcconv:macs"] == 16 * 32
    assert "kernel:unaligned_c16:count" not in f


def test_a_file_that_is_not_onnx_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"model\.onnx"):
        graph_features(path)


def synthetic(n: int, seed: int = 0) -> list[tuple[dict[str, float], float]]:
    """Latency = 0.05 ms + 0.01 ms per node + 2 ns per conv MAC + 6 ns per depthwise MAC."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        features = {"conv_macs": float(rng.uniform(1e5, 1e7)),
                    "dwconv_macs": float(rng.uniform(1e4, 1e6)),
                    "op:Conv": float(rng.integers(5, 40)), "op:Relu": float(rng.integers(5, 40))}
        latency = (0.05 + 0.01 * (features["op:Conv"] + features["op:Relu"])
                   + 2e-6 * features["conv_macs"] + 6e-6 * features["dwconv_macs"])
        samples.append((features, latency))
    return samples


@pytest.mark.parametrize("kind", ["additive", "log-ridge"])
def test_a_fit_on_a_known_relation_predicts_new_models(kind: str) -> None:
    predictor = LatencyPredictor(kind=kind).fit(synthetic(60))
    test = synthetic(30, seed=1)
    predicted = predictor.predict_many([features for features, _ in test])
    measured = np.array([latency for _, latency in test])
    error = prediction_error(measured, predicted)
    # The additive model is the relation itself; the log-linear one only approximates a sum
    # (seeded: deterministic, no flake).
    assert error["within_10pct"] >= (0.99 if kind == "additive" else 0.4)
    assert error["spearman"] is not None and error["spearman"] > 0.9
    assert predictor.predict(test[0][0]) == pytest.approx(predicted[0])


def kernel_synthetic(n: int, seed: int = 0) -> list[tuple[dict[str, float], float]]:
    """Latency as nn-Meter sees it: a fixed 0.02 ms, 3 µs per kernel, 2 ns per padded pointwise
    MAC, 9 ns per padded depthwise MAC and 0.1 ns per element leaving the SIMD layout. Every
    model has one stem (the same in all) and one classifier."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        features = {
            "kernels": float(rng.integers(10, 60)),
            "kernel:conv:count": 1.0, "kernel:conv:macs_c16": 442_368.0,
            "kernel:matmul:count": 1.0,
            "kernel:pwconv:macs_c16": float(rng.uniform(1e5, 5e6)),
            "kernel:dwconv:macs_c16": float(rng.uniform(1e4, 5e5)),
            "kernel:unaligned_c16:elements": float(rng.choice([0.0, rng.uniform(1e3, 1e5)])),
        }
        latency = (0.02 + 0.003 * features["kernels"]
                   + 2e-6 * features["kernel:pwconv:macs_c16"]
                   + 9e-6 * features["kernel:dwconv:macs_c16"]
                   + 1e-7 * features["kernel:unaligned_c16:elements"])
        samples.append((features, latency))
    return samples


def test_the_additive_model_recovers_per_kernel_costs() -> None:
    predictor = LatencyPredictor(kind="additive").fit(kernel_synthetic(60))
    assert set(predictor.feature_names) >= {"kernels", "kernel:pwconv:macs_c16",
                                           "kernel:unaligned_c16:elements"}
    test = kernel_synthetic(30, seed=1)
    measured = np.array([latency for _, latency in test])
    error = prediction_error(measured, predictor.predict_many([f for f, _ in test]))
    # Seeded, and the model family holds the relation: deterministic, no flake.
    assert error["within_10pct"] == 1.0 and error["mape"] < 1


def test_features_the_same_in_every_model_do_not_bias_the_additive_fit() -> None:
    # The stem and the classifier are in every model: their columns match the fixed cost.
    # The fit must share that cost out without a negative intercept, which, clipped to 0,
    # once shifted every prediction up.
    samples = kernel_synthetic(40)
    predictor = LatencyPredictor(kind="additive").fit(samples)
    assert predictor._intercept >= 0
    measured = np.array([latency for _, latency in samples])
    fitted = predictor.predict_many([f for f, _ in samples])
    np.testing.assert_allclose(fitted, measured, rtol=0.01)


def test_additive_uses_kernel_features_and_log_ridge_all() -> None:
    samples = [({**features, "flops": 2.0 * i, "threads": 1.0}, latency)
               for i, (features, latency) in enumerate(kernel_synthetic(20), start=1)]
    additive = LatencyPredictor(kind="additive").fit(samples)
    assert "flops" not in additive.feature_names and "threads" not in additive.feature_names
    assert "kernel:dwconv:macs_c16" in additive.feature_names
    log_ridge = LatencyPredictor(kind="log-ridge").fit(samples)
    assert {"flops", "threads", "kernels"} <= set(log_ridge.feature_names)


def test_evaluate_cross_validates_without_changing_the_predictor() -> None:
    samples = synthetic(40)
    predictor = LatencyPredictor()
    error = predictor.evaluate(samples, folds=5)
    assert not predictor.fitted
    assert error["n"] == 40 and error["folds"] == 5
    assert error["within_10pct"] is not None and error["within_10pct"] >= 0.95
    assert error["mape"] is not None and error["mape"] < 5


def test_too_little_history_says_how_much_it_has_and_needs() -> None:
    few = synthetic(MIN_PROBES - 1)
    with pytest.raises(ValueError, match=rf"at least {MIN_PROBES}.*there are {MIN_PROBES - 1}"):
        LatencyPredictor().fit(few)
    with pytest.raises(ValueError, match=f"at least {MIN_PROBES}"):
        LatencyPredictor().evaluate(few)


def test_bad_arguments_and_an_unfitted_predictor() -> None:
    with pytest.raises(ValueError, match="`kind`"):
        LatencyPredictor(kind="forest")
    with pytest.raises(ValueError, match="not fitted"):
        LatencyPredictor().predict({"conv_macs": 1.0})
    samples = synthetic(MIN_PROBES)
    samples[0] = (samples[0][0], 0.0)
    with pytest.raises(ValueError, match="positive"):
        LatencyPredictor().fit(samples)


@pytest.mark.parametrize("kind", ["additive", "log-ridge"])
def test_state_round_trips_through_json(kind: str) -> None:
    predictor = LatencyPredictor(kind=kind).fit(synthetic(20))
    state = json.loads(json.dumps(predictor.to_dict()))
    restored = LatencyPredictor.from_dict(state)
    test = [features for features, _ in synthetic(5, seed=2)]
    assert restored.kind == kind and restored.feature_names == predictor.feature_names
    np.testing.assert_allclose(restored.predict_many(test), predictor.predict_many(test))
    with pytest.raises(ValueError, match="version"):
        LatencyPredictor.from_dict({**state, "version": 99})


def test_features_of_an_exported_model_feed_a_fit(conv_gemm: Path) -> None:
    features = graph_features(conv_gemm)
    samples = [({k: v * scale for k, v in features.items()}, 0.1 * scale)
               for scale in range(1, MIN_PROBES + 1)]
    predictor = LatencyPredictor().fit(samples)
    assert predictor.predict(features) == pytest.approx(0.1, rel=0.05)
