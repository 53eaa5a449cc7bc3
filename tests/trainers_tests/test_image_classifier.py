"""The image-classifier trainer on digits, on a tiny budget."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch

from edgetune.errors import InvalidSpecError, TrialFailed, TrialPruned
from edgetune.spec import TrainerSpec
from edgetune.trainers import available_trainers, get_trainer_class
from edgetune.trainers._image import build_cnn

PARAMS = {"depth": 2, "width": 8, "kernel_size": 3, "lr": 0.01}


def fit(params=PARAMS, data_dir=None, **spec):
    trainer = get_trainer_class("image-classifier")(TrainerSpec(epochs=2, seed=0, **spec),
                                                    data_dir=data_dir)
    reports: list[tuple[int, float]] = []
    result = trainer.fit(params, report=lambda e, m: reports.append((e, m["accuracy"])))
    return result, reports


def test_registry_finds_the_builtin_trainer() -> None:
    assert "image-classifier" in available_trainers()
    with pytest.raises(InvalidSpecError, match="known trainers"):
        get_trainer_class("nope")


def test_trains_reports_every_epoch_and_learns() -> None:
    result, reports = fit()
    assert [e for e, _ in reports] == [1, 2]
    assert result.metrics["accuracy"] == reports[-1][1]
    assert result.metrics["accuracy"] > 0.5  # 10 classes: chance is 0.1
    out = result.model(result.example_input)
    assert out.shape == (1, 10) and tuple(result.example_input.shape) == (1, 1, 8, 8)


def test_is_deterministic_for_a_seed_on_cpu() -> None:
    first, _ = fit()
    second, _ = fit()
    assert first.metrics == second.metrics
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_architecture_follows_the_params() -> None:
    small = build_cnn(in_channels=1, n_classes=10, depth=1, width=8, kernel_size=3)
    big = build_cnn(in_channels=1, n_classes=10, depth=3, width=16, kernel_size=5)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(big) > 10 * count(small)
    convs = [m for m in big.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert all(c.kernel_size == (5, 5) for c in convs)


def test_a_pruner_stop_propagates() -> None:
    trainer = get_trainer_class("image-classifier")(TrainerSpec(epochs=5))

    def report(epoch: int, metrics: Mapping[str, float]) -> None:
        raise TrialPruned({"epoch": epoch})

    with pytest.raises(TrialPruned):
        trainer.fit(PARAMS, report=report)


def test_mnist_without_files_fails_with_a_clear_reason(tmp_path) -> None:
    with pytest.raises(TrialFailed, match="MNIST files not found"):
        fit(dataset="mnist", data_dir=tmp_path)


def test_a_request_cannot_name_a_directory_to_read() -> None:
    with pytest.raises(InvalidSpecError, match=r"trainer\.options\.data_dir"):
        get_trainer_class("image-classifier").validate_spec(
            TrainerSpec(dataset="mnist", options={"data_dir": "/etc"})
        )
