"""The tabular-classifier trainer: training, options, export, and a whole job on the backend."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from edgetune.errors import InvalidSpecError, TrialPruned
from edgetune.spaces import BUILTIN_SPACES
from edgetune.spec import JobSpec, TrainerSpec
from edgetune.trainers import available_trainers, get_trainer_class
from edgetune.trainers._tabular import TabularClassifier, build_mlp
from edgetune.trainers.export import export_model

PARAMS = {"n_layers": 2, "width": 32, "activation": "relu", "dropout": 0.1, "lr": 0.01}


def fit(params=PARAMS, **spec):
    spec = {"name": "tabular-classifier", "dataset": "iris", "epochs": 5, "batch_size": 16,
            "seed": 0, **spec}
    trainer = get_trainer_class("tabular-classifier")(TrainerSpec(**spec))
    reports: list[tuple[int, float]] = []
    result = trainer.fit(params, report=lambda e, m: reports.append((e, m["accuracy"])))
    return result, reports


def refuse(**spec) -> InvalidSpecError:
    with pytest.raises(InvalidSpecError) as info:
        TabularClassifier.validate_spec(
            TrainerSpec(**{"name": "tabular-classifier", "dataset": "iris", **spec})
        )
    return info.value


def test_registry_finds_the_trainer() -> None:
    assert "tabular-classifier" in available_trainers()
    assert get_trainer_class("tabular-classifier") is TabularClassifier


def test_reads_every_parameter_of_the_mlp_space() -> None:
    assert {p.name for p in BUILTIN_SPACES["mlp"].params} <= TabularClassifier.params


def test_learns_iris_and_reports_every_epoch() -> None:
    result, reports = fit()
    assert [e for e, _ in reports] == [1, 2, 3, 4, 5]
    assert result.metrics["accuracy"] == reports[-1][1]
    assert result.metrics["accuracy"] > 0.8  # 3 classes: chance is 1/3
    assert tuple(result.example_input.shape) == (1, 4)
    assert not result.example_input.any()
    assert result.model(result.example_input).shape == (1, 3)
    assert not result.model.training


def test_is_deterministic_for_a_seed_on_cpu() -> None:
    first, first_reports = fit(options={"device": "cpu"})
    second, second_reports = fit(options={"device": "cpu"})
    assert first_reports == second_reports
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_synthetic_uses_the_size_options() -> None:
    options = {"n_samples": 200, "n_features": 6, "n_classes": 4}
    result, reports = fit(dataset="synthetic", epochs=1, options=options)
    assert len(reports) == 1
    assert result.model(result.example_input).shape == (1, 4)
    assert tuple(result.example_input.shape) == (1, 6)


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_each_activation_builds(activation: str) -> None:
    model = build_mlp(n_features=5, n_classes=3, n_layers=3, width=16, activation=activation,
                      dropout=0.2)
    kinds = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "tanh": torch.nn.Tanh}
    assert sum(isinstance(m, kinds[activation]) for m in model) == 3
    assert [m.out_features for m in model if isinstance(m, torch.nn.Linear)] == [16, 16, 16, 3]
    assert model(torch.zeros(2, 5)).shape == (2, 3)


def test_an_unknown_activation_is_refused() -> None:
    with pytest.raises(ValueError, match=r"`activation` is 'sigmoid'.*'relu', 'gelu', 'tanh'"):
        build_mlp(n_features=5, n_classes=3, n_layers=1, width=16, activation="sigmoid")


def test_a_pruner_stop_propagates() -> None:
    def report(epoch: int, metrics: Mapping[str, float]) -> None:
        raise TrialPruned({"epoch": epoch})

    trainer = TabularClassifier(TrainerSpec(name="tabular-classifier", dataset="iris"))
    with pytest.raises(TrialPruned):
        trainer.fit(PARAMS, report=report)


def test_mlp_widths_per_layer() -> None:
    model = build_mlp(n_features=5, n_classes=3, n_layers=3, width=[32, 16, 8],
                      activation="relu")
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [32, 16, 8, 3]
    with pytest.raises(ValueError, match="one per layer"):
        build_mlp(n_features=5, n_classes=3, n_layers=2, width=[32], activation="relu")


@pytest.mark.parametrize(
    ("spec", "field", "text"),
    [
        ({"dataset": "digits"}, "trainer.dataset", "known: iris, wine, breast-cancer, synthetic"),
        ({"options": {"colour": "red"}}, "trainer.options.colour", "unknown option"),
        ({"options": {"val_fraction": 0.9}}, "trainer.options.val_fraction", "(0, 0.5]"),
        ({"options": {"threads": 0}}, "trainer.options.threads", ">= 1"),
        ({"options": {"threads": True}}, "trainer.options.threads", ">= 1"),
        ({"options": {"device": "tpu"}}, "trainer.options.device", "'cpu', 'cuda', 'auto'"),
        ({"dataset": "synthetic", "options": {"n_samples": 10}}, "trainer.options.n_samples",
         "[50, 1000000]"),
        ({"dataset": "synthetic", "options": {"n_features": 0}}, "trainer.options.n_features",
         "[1, 10000]"),
        ({"dataset": "synthetic", "options": {"n_classes": 1}}, "trainer.options.n_classes",
         "[2, 1000]"),
        ({"dataset": "synthetic", "options": {"n_classes": 2.5}}, "trainer.options.n_classes",
         "must be an integer"),
        ({"dataset": "iris", "options": {"n_samples": 100}}, "trainer.options.n_samples",
         "only applies to the datasets 'synthetic', 'synthetic-image'"),
        ({"dataset": "synthetic", "options": {"n_features": 3, "n_classes": 9}},
         "trainer.options.n_features", "at least 4 features"),
        ({"dataset": "synthetic", "options": {"n_samples": 1_000_000, "n_features": 10_000}},
         "trainer.options.n_samples", "must be <= 2147483648"),
        ({"dataset": "synthetic", "options": {"n_samples": 100, "n_classes": 30}},
         "trainer.options.n_samples", "stratified split"),
    ],
)
def test_option_errors_name_the_field(spec: dict, field: str, text: str) -> None:
    error = refuse(**spec)
    assert error.field == field
    assert text in error.message


def test_good_options_pass() -> None:
    TabularClassifier.validate_spec(TrainerSpec(
        name="tabular-classifier", dataset="synthetic",
        options={"n_samples": 500, "n_features": 8, "n_classes": 4, "val_fraction": 0.25,
                 "threads": 2, "device": "auto"},
    ))


def test_the_model_exports_to_onnx_and_runs(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    result, _ = fit(dataset="wine", epochs=1, params={**PARAMS, "activation": "gelu"})
    artifact = export_model(result.model, result.example_input, tmp_path, format="onnx")
    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 13)).astype(np.float32)
    (out,) = session.run(["output"], {"input": x})
    assert out.shape == (1, 3)
    with torch.no_grad():
        expected = result.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


class Control:
    def __init__(self) -> None:
        self.stop = threading.Event()

    def heartbeat(self) -> bool:
        return True

    def cancel_requested(self) -> bool:
        return False

    def should_stop(self) -> bool:
        return self.stop.is_set()


@pytest.mark.slow
def test_a_whole_job_runs_on_the_optuna_backend(tmp_path) -> None:
    from edgetune.devices import MeasureConfig
    from edgetune.search.backends import OptunaBackend
    from edgetune.search.validation import validate_job_spec
    from edgetune.storage import JobRepository, JobStatus, open_database

    spec = JobSpec.model_validate({
        "name": "tab", "seed": 0,
        "trainer": {"name": "tabular-classifier", "dataset": "wine", "epochs": 3},
        "space": {"name": "mlp"},
        "objectives": [{"name": "accuracy"}, {"name": "latency_ms"}],
        "algorithm": {"sampler": "nsga2"},
        "budget": {"n_trials": 3},
    })
    validate_job_spec(spec)

    db = open_database(f"sqlite:///{tmp_path / 'edgetune.db'}")
    try:
        jobs = JobRepository(db)
        backend = OptunaBackend(
            storage_url=db.url, artifact_dir=str(tmp_path / "artifacts"),
            latency=MeasureConfig(min_repeats=5, min_time_s=0.0), poll_interval_s=0.1,
        )
        jobs.create(spec)
        job = jobs.claim("test", lease_s=600)
        assert job is not None
        outcome = backend.run(job, spec, Control())
        assert outcome.status == JobStatus.SUCCEEDED
        trials = optuna.load_study(study_name=job.study_name, storage=db.url).get_trials()
    finally:
        db.dispose()

    assert len(trials) == 3
    assert all(t.state == TrialState.COMPLETE for t in trials), [
        t.user_attrs.get("error") for t in trials
    ]
    for t in trials:
        accuracy, latency_ms = t.values
        assert 0 <= accuracy <= 1 and latency_ms > 0
        # Optuna records the searched parameters; the fixed `arch` is not one, and width_i
        # exists only when there are at least i layers.
        widths = {f"width_{i}" for i in range(1, t.params["n_layers"] + 1)}
        assert set(t.params) == {"n_layers", "activation", "dropout", "lr", *widths}
        assert {p.name for p in BUILTIN_SPACES["mlp"].params} >= set(t.params)
        assert len(t.user_attrs["val_accuracy_history"]) == 3
