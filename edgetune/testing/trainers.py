"""The trainer contract: what every trainer of the registry (`available_trainers`) does with a
tiny job, in process: the function trainer, and the image and tabular classifiers on a few
epochs of small data.

Subclass `TrainerTestCase` in a test module and give it a `trainer_case` fixture that returns
a `TrainerCase` per trainer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgetune.errors import TrialPruned
from edgetune.spaces import ParamValue
from edgetune.spec import TrainerSpec
from edgetune.trainers import FitResult, Trainer, get_trainer_class


@dataclass(frozen=True)
class TrainerCase:
    """A trainer, a tiny job for it (at least 2 epochs), and one candidate's parameters."""

    name: str
    spec: TrainerSpec
    params: Mapping[str, ParamValue]

    @property
    def trainer_class(self) -> type[Trainer]:
        return get_trainer_class(self.name)

    def fit(self, *, checkpoint_dir: Path | None = None
            ) -> tuple[FitResult, list[tuple[int, dict[str, float]]]]:
        """Train once; the result and every report (epoch, metrics)."""
        reports: list[tuple[int, dict[str, float]]] = []
        trainer = self.trainer_class(self.spec)
        result = trainer.fit(self.params, report=lambda e, m: reports.append((e, dict(m))),
                             checkpoint_dir=checkpoint_dir)
        return result, reports


def _state(result: FitResult) -> list[Any]:
    if result.model is None:
        return []
    return [v.tolist() for v in result.model.state_dict().values()]


class TrainerTestCase:
    """What every trainer keeps: its spec and space pass its own checks; `fit` reports every
    epoch in order with its progress metrics and returns the metrics it measures (and, with a
    model, one that runs on its example input, in eval mode); a pruner's stop goes through
    and ends training; the same seed trains the same model; a checkpoint resumes where it
    stopped; `untrained` gives the architecture or None."""

    @pytest.fixture
    def trainer_case(self) -> TrainerCase:
        raise NotImplementedError

    def test_its_own_checks_pass_the_case(self, trainer_case: TrainerCase) -> None:
        cls = trainer_case.trainer_class
        assert cls.name == trainer_case.name
        assert trainer_case.spec.dataset in cls.datasets
        cls.validate_spec(trainer_case.spec)
        assert set(cls.progress_metrics) <= set(cls.metrics)

    def test_fit_reports_every_epoch_and_returns_its_metrics(
        self, trainer_case: TrainerCase
    ) -> None:
        cls = trainer_case.trainer_class
        result, reports = trainer_case.fit()
        epochs = trainer_case.spec.epochs
        assert [e for e, _ in reports] == list(range(1, epochs + 1))
        for _, metrics in reports:
            assert any(k in metrics for k in cls.progress_metrics), metrics
        assert all(isinstance(v, float | int) and math.isfinite(v)
                   for v in result.metrics.values()), result.metrics
        # The progress metrics it measured at the end are its last report's (the function
        # trainer's early values carry a bias, gone at the last epoch).
        final = [k for k in cls.progress_metrics if k in result.metrics]
        assert final, (cls.progress_metrics, result.metrics)
        assert all(result.metrics[k] == pytest.approx(reports[-1][1][k]) for k in final)
        if result.model is not None:
            assert not result.model.training
            assert result.example_input is not None and result.example_input.shape[0] == 1
            assert result.model(result.example_input).shape[0] == 1

    def test_a_pruner_stop_ends_training(self, trainer_case: TrainerCase) -> None:
        trainer = trainer_case.trainer_class(trainer_case.spec)
        epochs: list[int] = []

        def report(epoch: int, metrics: Mapping[str, float]) -> None:
            epochs.append(epoch)
            raise TrialPruned({"epoch": epoch})

        with pytest.raises(TrialPruned):
            trainer.fit(trainer_case.params, report=report)
        assert epochs == [1]

    def test_the_same_seed_trains_the_same_model(self, trainer_case: TrainerCase) -> None:
        first, first_reports = trainer_case.fit()
        second, second_reports = trainer_case.fit()
        assert first_reports == second_reports
        assert first.metrics == second.metrics
        assert _state(first) == _state(second)

    def test_a_checkpoint_resumes_where_training_stopped(
        self, trainer_case: TrainerCase, tmp_path: Path
    ) -> None:
        done, _ = trainer_case.fit(checkpoint_dir=tmp_path)
        resumed, reports = trainer_case.fit(checkpoint_dir=tmp_path)
        assert reports == []  # every epoch was in the checkpoint
        assert resumed.metrics == done.metrics
        assert _state(resumed) == _state(done)

    def test_untrained_gives_the_architecture_or_none(self, trainer_case: TrainerCase) -> None:
        untrained = trainer_case.trainer_class(trainer_case.spec).untrained(trainer_case.params)
        if untrained is None:
            return
        assert untrained.model is not None and untrained.example_input is not None
        trained, _ = trainer_case.fit()
        assert untrained.model(untrained.example_input).shape == trained.model(
            trained.example_input).shape
