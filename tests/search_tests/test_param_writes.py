"""`suggest` stores a trial's parameters in one transaction on the service's database, exactly
as Optuna would store them one by one; other storages are written as usual."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy as sa
from optuna.exceptions import UpdateFinishedTrialError
from pydantic import TypeAdapter

from edgetune.search.space import suggest
from edgetune.spaces import Param, resolve_space
from edgetune.storage.optuna_storage import optuna_storage, params_in_one_write

SPACE = resolve_space(None, TypeAdapter(list[Param]).validate_python([
    {"type": "float", "name": "lr", "low": 1e-4, "high": 1e-1, "log": True},
    {"type": "int", "name": "layers", "low": 1, "high": 4},
    {"type": "categorical", "name": "act", "choices": ["relu", "gelu"]},
    {"type": "int", "name": "width_4", "low": 8, "high": 64, "step": 8,
     "condition": {"param": "layers", "values": [4]}},
    {"type": "fixed", "name": "epochs", "value": 3},
]))


class Commits:
    """Counts the engine's commits while in the block."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.n = 0

    def _count(self, _conn: object) -> None:
        self.n += 1

    def __enter__(self) -> Commits:
        sa.event.listen(self.engine, "commit", self._count)
        return self

    def __exit__(self, *_: object) -> None:
        sa.event.remove(self.engine, "commit", self._count)


def test_a_trials_parameters_take_one_commit_and_read_back_as_optunas(
    database_url: str,
) -> None:
    storage = optuna_storage(database_url)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask()
        with Commits(storage.engine) as commits:
            values = suggest(trial, SPACE)
        assert commits.n == 1, "one transaction for all of the trial's parameters"
        stored = storage.get_trial(trial._trial_id)
        searched = {k: v for k, v in values.items() if k != "epochs"}
        assert stored.params == searched and values["epochs"] == 3
        assert set(stored.distributions) == set(searched)
        study.tell(trial, 1.0)
    # Optuna reads them as its own: the study's search space and a fresh process's view.
    again = optuna.load_study(study_name=study.study_name, storage=database_url)
    assert [t.params for t in again.trials] == [t.params for t in study.trials]


def test_a_trial_finished_meanwhile_stores_nothing(database_url: str) -> None:
    storage = optuna_storage(database_url)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    with pytest.raises(UpdateFinishedTrialError), params_in_one_write(trial):
        trial.suggest_float("x", 0, 1)
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    assert storage.get_trial(trial._trial_id).params == {}


def test_an_incompatible_distribution_is_refused_as_optuna_refuses_it(database_url: str) -> None:
    storage = optuna_storage(database_url)
    study = optuna.create_study(storage=storage)
    first = study.ask()
    with params_in_one_write(first):
        first.suggest_float("x", 0, 1)
    second = study.ask()
    with (pytest.raises(ValueError, match="Cannot set different distribution kind"),
          params_in_one_write(second)):
        second.suggest_categorical("x", ["a", "b"])


def test_other_storages_and_fixed_trials_sample_as_usual() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    values = suggest(trial, SPACE)
    assert study.trials[0].params == {k: v for k, v in values.items() if k != "epochs"}
    fixed = optuna.trial.FixedTrial({"lr": 0.01, "layers": 2, "act": "relu"})
    assert suggest(fixed, SPACE) == {"lr": 0.01, "layers": 2, "act": "relu", "epochs": 3}
