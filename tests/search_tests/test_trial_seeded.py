"""A seeded job's trial k has the same parameters whichever process asks for it."""

from __future__ import annotations

import optuna
import pytest

from edgetune.search.samplers import TrialSeededSampler


def draw(study: optuna.Study) -> dict[str, float]:
    trial = study.ask()
    params = {"x": trial.suggest_float("x", 0, 1), "y": trial.suggest_int("y", 0, 1000)}
    study.tell(trial, params["x"])
    return params


@pytest.mark.parametrize("kind", ["random", "tpe"])
def test_two_processes_sharing_a_study_draw_what_one_alone_would(kind: str, tmp_path) -> None:
    def sampler() -> TrialSeededSampler:
        def build(seed: int | None) -> optuna.samplers.BaseSampler:
            if kind == "random":
                return optuna.samplers.RandomSampler(seed=seed)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)
        return TrialSeededSampler(build, seed=11)

    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    optuna.create_study(study_name="shared", storage=storage)
    first, second = (optuna.load_study(study_name="shared", storage=storage, sampler=sampler())
                     for _ in range(2))
    shared = [draw(first if i % 2 == 0 else second) for i in range(8)]
    # Two workers with one seed each used to draw the same sequence: every trial twice.
    assert len({tuple(p.values()) for p in shared}) == 8

    alone = optuna.create_study(study_name="alone", storage=storage, sampler=sampler())
    assert [draw(alone) for _ in range(8)] == shared
