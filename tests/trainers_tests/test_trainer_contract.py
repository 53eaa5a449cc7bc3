"""Every built-in trainer runs the trainer contract (`edgetune.testing.trainers`) on a tiny job."""

from __future__ import annotations

import pytest

from edgetune.spec import TrainerSpec
from edgetune.testing.trainers import TrainerCase, TrainerTestCase
from edgetune.trainers import available_trainers

CASES = {
    "function": TrainerCase(
        "function", TrainerSpec(name="function", dataset="sphere", epochs=3, seed=0),
        {"x0": 0.25, "x1": 0.75},
    ),
    "image-classifier": TrainerCase(
        "image-classifier",
        TrainerSpec(name="image-classifier", dataset="digits", epochs=2, seed=0),
        {"depth": 1, "width": 8, "kernel_size": 3, "lr": 0.01},
    ),
    "tabular-classifier": TrainerCase(
        "tabular-classifier",
        TrainerSpec(name="tabular-classifier", dataset="iris", epochs=2, batch_size=16, seed=0),
        {"n_layers": 1, "width": 16, "activation": "relu", "lr": 0.01},
    ),
}


def test_every_registered_trainer_has_a_case() -> None:
    assert set(CASES) == set(available_trainers())


class TestTrainerContract(TrainerTestCase):
    @pytest.fixture(params=list(CASES))
    def trainer_case(self, request: pytest.FixtureRequest) -> TrainerCase:
        return CASES[request.param]
