"""Latency predictors: graph features of a known model, fits on synthetic latencies with a known
relation, cross-validated error, too little history, and the JSON round trip."""

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
