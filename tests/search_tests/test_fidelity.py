"""Successive halving with rungs where early scores rank trials as final ones do: the rank
correlations against brute force, the rungs they allow, the decisions, and a restart."""

from __future__ import annotations

import itertools
import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from edgetune.search.registry import PRUNERS, AlgorithmContext
from edgetune.search.schedulers import (
    FidelityHalvingPruner,
    MOASHAPruner,
    fidelity_estimate,
    kendall_tau,
    report_progress,
    spearman_rho,
)
from edgetune.spec import JobSpec

# --- rank correlations --------------------------------------------------------------------


def _brute_kendall(x, y) -> float:
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif dx * dy > 0:
            concordant += 1
        else:
            discordant += 1
    return (concordant - discordant) / math.sqrt(
        (concordant + discordant + ties_x) * (concordant + discordant + ties_y)
    )


def _brute_spearman(x, y) -> float:
    def ranks(v):
        return [sum(1 for w in v if w < a) + (sum(1 for w in v if w == a) + 1) / 2 for a in v]

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, 15).astype(float).tolist()  # few levels: many ties
    y = [a + b for a, b in zip(x, rng.integers(0, 3, 15).tolist(), strict=True)]
    assert spearman_rho(x, y) == pytest.approx(_brute_spearman(x, y))
    assert kendall_tau(x, y) == pytest.approx(_brute_kendall(x, y))


def test_correlations_of_orders_and_degenerate_samples():
    assert spearman_rho([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(spearman_rho([1, 1, 1], [1, 2, 3]))
    assert math.isnan(kendall_tau([1.0], [2.0]))
    with pytest.raises(ValueError, match="equal length"):
        spearman_rho([1, 2], [1, 2, 3])


# --- studies ------------------------------------------------------------------------------


def make_study(n_objectives=1, pruner=None, storage=None, study_name=None) -> optuna.Study:
    return optuna.create_study(
        directions=["maximize"] + ["minimize"] * (n_objectives - 1), pruner=pruner,
        storage=storage, study_name=study_name,
    )


def run_trial(study, curve, final=None, extra=()) -> int | None:
    """One trial reporting `curve` (values per epoch from 1; `extra` objectives alongside,
    constant) through `report_progress`; returns the epoch it was stopped at, or None."""
    trial = study.ask()
    for epoch, value in enumerate(curve, 1):
        if report_progress(study, trial._trial_id, epoch, [value, *extra]):
            study.tell(trial, state=TrialState.PRUNED)
            return epoch
    study.tell(trial, [curve[-1] if final is None else final, *extra])
    return None


#: Epoch 1 ranks trials opposite to the end, epoch 2 as the end: late bloomers.
def crossing(final: float) -> list[float]:
    return [1 - final, final - 0.05, final - 0.02, final]


FINALS = [0.5, 0.9, 0.6, 0.8, 0.7, 0.55, 0.85]


def test_estimate_measures_each_epoch_and_leaves_constant_objectives_out():
    study = make_study(2)
    for i, final in enumerate(FINALS):
        run_trial(study, crossing(final), extra=[100.0 + i])
    estimate = fidelity_estimate(study.trials, 2)
    assert estimate is not None
    assert (estimate.n_trials, estimate.final_step, estimate.objectives) == (7, 4, (0,))
    assert estimate.spearman[1][0] == pytest.approx(-1.0)
    assert estimate.kendall[1][0] == pytest.approx(-1.0)
    assert estimate.spearman[2][0] == pytest.approx(1.0)
    assert estimate.rung_steps(threshold=0.7, min_step=1, reduction_factor=2) == [2]
    # The final step never holds a rung, however well it correlates.
    assert 4 not in estimate.rung_steps(threshold=0.7, min_step=3, reduction_factor=2)


def test_a_rung_needs_every_later_step_to_pass():
    study = make_study()
    # Epoch 1 and 3 rank as the end, epoch 2 backwards: a lucky epoch 1 opens no rung there.
    for final in FINALS:
        run_trial(study, [final - 0.3, 1 - final, final - 0.1, final, final])
    estimate = fidelity_estimate(study.trials, 1)
    assert estimate is not None
    assert estimate.min_spearman(1) == pytest.approx(1.0)
    assert estimate.rung_steps(threshold=0.7, min_step=1, reduction_factor=3) == [3]
    assert estimate.rung_steps(threshold=0.7, min_step=4, reduction_factor=3) == [4]


def test_estimate_ignores_pruned_and_running_trials():
    study = make_study()
    assert fidelity_estimate(study.trials, 1) is None
    run_trial(study, [0.1, 0.2, 0.3])
    study.tell(study.ask(), state=TrialState.PRUNED)
    study.ask()  # running
    estimate = fidelity_estimate(study.trials, 1)
    assert estimate is not None and estimate.n_trials == 1


def test_no_trial_is_stopped_before_enough_trials_are_complete():
    pruner = FidelityHalvingPruner(min_trials_for_rungs=6, reduction_factor=2)
    study = make_study(pruner=pruner)
    # Perfectly correlated curves, and each new trial worse than all before it: successive
    # halving with fixed rungs would stop every one after the first.
    finals = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    assert [run_trial(study, [f - 0.3, f - 0.2, f - 0.1, f]) for f in finals] == [None] * 6
    assert pruner.rung_steps(study) == [1, 2]
    assert run_trial(study, [0.1, 0.2, 0.3, 0.35]) == 1


def test_a_poorly_correlated_epoch_holds_no_rung():
    pruner = FidelityHalvingPruner(min_trials_for_rungs=6, rung_correlation=0.7)
    study = make_study(pruner=pruner)
    for final in FINALS:
        assert run_trial(study, crossing(final)) is None
    # Epoch 1 ranks backwards: no rung there. The first rung is epoch 2, then 2 x 3 = 6 is
    # past the budget.
    assert pruner.rung_steps(study) == [2]
    # Worst at epoch 2 but best at epoch 1: judged only at epoch 2, and stopped there.
    assert run_trial(study, crossing(0.3)) == 2
    # Best at epoch 2: goes on to the end.
    assert run_trial(study, crossing(0.95)) is None


def test_threshold_one_needs_a_perfect_order():
    pruner = FidelityHalvingPruner(min_trials_for_rungs=6, rung_correlation=1.0)
    study = make_study(pruner=pruner)
    for final in FINALS:
        run_trial(study, [final + (0.2 if final == 0.55 else 0.0), final, final, final])
    assert pruner.rung_steps(study) == [2]


def test_top_share_goes_on_with_complete_and_stopped_trials_competing():
    pruner = FidelityHalvingPruner(min_trials_for_rungs=6, reduction_factor=3)
    study = make_study(pruner=pruner)
    finals = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    for f in finals:
        run_trial(study, [f, f, f, f])
    assert pruner.rung_steps(study) == [1, 3]
    # 7 at epoch 1: the best 7 // 3 = 2 go on; 0.92 is second.
    assert run_trial(study, [0.92, 0.92, 0.2, 0.2]) == 3
    # The stopped trial competes at epoch 1 too: 8 there, best 2 go on; 0.93 is now second.
    assert run_trial(study, [0.93, 0.93, 0.93, 0.93]) is None
    assert run_trial(study, [0.91, 0.91, 0.91, 0.91]) == 1


def test_several_objectives_rank_by_front():
    pruner = FidelityHalvingPruner(min_trials_for_rungs=6, reduction_factor=3)
    study = make_study(2, pruner=pruner)
    for i, f in enumerate([0.5, 0.6, 0.7, 0.8, 0.9, 0.95]):
        run_trial(study, [f, f, f, f], extra=[10.0 * (i + 1)])  # larger is more accurate
    assert pruner.rung_steps(study) == [1, 3]
    # Least accurate, but smaller than any: an end of the front, so it goes on.
    assert run_trial(study, [0.3, 0.3, 0.3, 0.3], extra=[1.0]) is None
    # Dominated by the 0.6 / 20 trial: stopped at the first rung.
    assert run_trial(study, [0.55, 0.55, 0.55, 0.55], extra=[25.0]) == 1


def test_nan_at_a_rung_stops_the_trial():
    pruner = FidelityHalvingPruner(min_trials_for_rungs=6)
    study = make_study(pruner=pruner)
    for f in [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]:
        run_trial(study, [f, f, f, f])
    assert run_trial(study, [math.nan, 0.99, 0.99, 0.99]) == 1
    assert run_trial(study, [0.99, 0.99, 0.99, 0.99]) is None


def test_decisions_come_from_the_study_after_a_restart(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = {"min_trials_for_rungs": 6, "reduction_factor": 2}
    rng = np.random.default_rng(3)
    finals = rng.uniform(0.5, 0.95, 16)
    curves = [[float(f - 0.1 * (4 - e) + rng.normal(0, 0.03)) for e in range(1, 4)] + [float(f)]
              for f in finals]

    def decisions(study: optuna.Study, part: list[list[float]]) -> list[int | None]:
        return [run_trial(study, c) for c in part]

    once = decisions(make_study(pruner=FidelityHalvingPruner(**args)), curves)
    first = make_study(pruner=FidelityHalvingPruner(**args), storage=storage, study_name="s")
    before = decisions(first, curves[:9])
    # A new process: the study loaded from the database with a fresh pruner.
    again = optuna.load_study(study_name="s", storage=storage,
                              pruner=FidelityHalvingPruner(**args))
    assert before + decisions(again, curves[9:]) == once
    assert any(d is not None for d in once)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rung_correlation": 0.0}, "rung_correlation"),
    ({"rung_correlation": 1.5}, "rung_correlation"),
    ({"min_trials_for_rungs": 2}, "min_trials_for_rungs"),
    ({"min_resource": 0}, "min_resource"),
    ({"reduction_factor": 1}, "reduction_factor"),
])
def test_constructor_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FidelityHalvingPruner(**kwargs)


# --- registry -----------------------------------------------------------------------------


def spec(pruner: str, n_objectives: int, options: dict) -> JobSpec:
    return JobSpec.model_validate({
        "name": "j", "trainer": {"name": "function", "dataset": "zdt1", "epochs": 4},
        "space": {"name": None, "params": [
            {"type": "float", "name": f"x{i}", "low": 0, "high": 1} for i in range(4)]},
        "objectives": [{"name": f"f{k + 1}"} for k in range(n_objectives)],
        "algorithm": {"sampler": "random", "pruner": pruner, "options": options},
    })


@pytest.mark.parametrize(("pruner", "n_objectives", "fixed"), [
    ("sha", 1, optuna.pruners.SuccessiveHalvingPruner), ("mo-asha", 2, MOASHAPruner),
])
def test_registry_default_follows_correlation_and_zero_restores_fixed_rungs(
    pruner, n_objectives, fixed
):
    build = PRUNERS[pruner].optuna
    assert build is not None
    default = build(AlgorithmContext(spec(pruner, n_objectives, {}), []))
    assert isinstance(default, FidelityHalvingPruner)
    assert isinstance(
        build(AlgorithmContext(spec(pruner, n_objectives, {"rung_correlation": 0}), [])), fixed
    )
    tuned = build(AlgorithmContext(
        spec(pruner, n_objectives, {"rung_correlation": 0.9, "min_trials_for_rungs": 4}), []
    ))
    assert isinstance(tuned, FidelityHalvingPruner)
    assert (tuned._rung_correlation, tuned._min_trials_for_rungs) == (0.9, 4)


@pytest.mark.parametrize(("options", "error"), [
    ({"rung_correlation": 0.5, "min_trials_for_rungs": 8}, None),
    ({"rung_correlation": 0}, None),
    ({"rung_correlation": 1.5}, "rung_correlation"),
    ({"rung_correlation": True}, "rung_correlation"),
    ({"min_trials_for_rungs": 2}, "min_trials_for_rungs"),
])
def test_options_are_checked_at_submission(options, error):
    from edgetune.errors import InvalidSpecError
    from edgetune.search.validation import validate_job_spec

    job = spec("sha", 1, options)
    if error is None:
        validate_job_spec(job)
    else:
        with pytest.raises(InvalidSpecError, match=error):
            validate_job_spec(job)
    with pytest.raises(InvalidSpecError, match="neither"):
        validate_job_spec(spec("median", 1, {"rung_correlation": 0.5}))
