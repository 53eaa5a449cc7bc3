"""The contract of early stopping: every pruner (optuna backend) and scheduler (ray backend) of
the registry (`PRUNERS`), built as a job builds it, decides on trials of the `function`
trainer, in process: pruners on an in-memory Optuna study, schedulers through Ray Tune's
scheduler interface without a cluster.

Subclass `PrunerTestCase` (fixture `pruner_name`, over the entries with an `optuna` side) or
`SchedulerTestCase` (fixture `scheduler_name`, over those with a `ray` side).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from edgetune.errors import TrialPruned
from edgetune.search.registry import (
    MIN_TRIALS_FOR_RUNGS,
    PRUNERS,
    RUNG_CORRELATION,
    AlgorithmContext,
    PrunerEntry,
    progress_metric,
)
from edgetune.search.schedulers import fidelity_estimate, report_progress
from edgetune.search.space import suggest
from edgetune.spaces import FloatParam, Param
from edgetune.spec import JobSpec
from edgetune.storage.study_store import trial_id as trial_id_of
from edgetune.trainers import get_trainer_class

EPOCHS = 4
#: x0..x3 on a grid of 0.25, as the end-to-end jobs use.
SPACE: list[Param] = [FloatParam(name=f"x{i}", low=0, high=1, step=0.25) for i in range(4)]
#: Entries that must stop some of `N_TRIALS` trials of these problems: successive halving
#: keeps a third at each rung. The draws are seeded, so whether they do is not chance.
MUST_STOP = {"sha", "asha", "mo-asha"}
#: Entries that never stop a trial.
NEVER_STOP = {"none", "pbt"}
N_TRIALS = 9
#: The trainer every job of these contracts runs.
FUNCTION = get_trainer_class("function")


def objective_counts(entry: PrunerEntry) -> list[int]:
    return ([1] if entry.single_objective else []) + ([2] if entry.multi_objective else [])


def job_spec(pruner: str, n_objectives: int, *, backend: str = "optuna", seed: int = 11,
             options: Mapping[str, Any] | None = None) -> JobSpec:
    """A job of the `function` trainer: sphere for one objective, ZDT1 for two."""
    return JobSpec.model_validate({
        "name": f"contract-{pruner}", "seed": seed,
        "trainer": {"name": "function", "dataset": "sphere" if n_objectives == 1 else "zdt1",
                    "epochs": EPOCHS},
        "space": {"name": None, "params": [p.model_dump() for p in SPACE]},
        "objectives": [{"name": f"f{k + 1}"} for k in range(n_objectives)],
        "algorithm": {"backend": backend, "sampler": "random", "pruner": pruner,
                      "options": dict(options or {})},
    })


def run_job(pruner: str, n_objectives: int, *, fresh_pruner_per_trial: bool = False,
            seed: int = 11, options: Mapping[str, Any] | None = None) -> optuna.Study:
    """`N_TRIALS` trials of the job, each trained in process and reported to the pruner the
    way a trial of the optuna backend reports (`report_progress`); with
    `fresh_pruner_per_trial`, each trial reports through a pruner built anew, as each trial's
    own process does; `options` go to the job's `algorithm.options`."""
    spec = job_spec(pruner, n_objectives, seed=seed, options=options)
    build = PRUNERS[pruner].optuna
    assert build is not None
    ctx = AlgorithmContext(spec, SPACE)
    study = optuna.create_study(
        study_name=spec.name, storage=optuna.storages.InMemoryStorage(),
        directions=["minimize"] * n_objectives, pruner=build(ctx),
        sampler=optuna.samplers.RandomSampler(seed=seed),
    )
    keys = [progress_metric(o.name, FUNCTION.progress_metrics) for o in spec.objectives]
    for _ in range(N_TRIALS):
        trial = study.ask()
        params = suggest(trial, SPACE)
        if fresh_pruner_per_trial:
            study.pruner = build(ctx)

        def report(epoch: int, metrics: Mapping[str, float], trial_id: int = trial_id_of(trial)
                   ) -> None:
            values = [float(metrics[k]) for k in keys if k is not None]
            if report_progress(study, trial_id, epoch, values):
                raise TrialPruned({"user_attrs": {"pruned_at_epoch": epoch}})

        try:
            fit = FUNCTION(spec.trainer).fit(params, report=report)
        except TrialPruned as e:
            trial.set_user_attr("pruned_at_epoch", e.args[0]["user_attrs"]["pruned_at_epoch"])
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, [fit.metrics[o.name] for o in spec.objectives])
    return study


def _record(curve: list[dict[str, Any]], epoch: int, metrics: Mapping[str, float]) -> None:
    curve.append({"epoch": epoch, "training_iteration": epoch, **metrics})


class PrunerTestCase:
    """What every pruner keeps: a trial ends complete with every objective, or pruned before
    its last epoch; successive halving stops some trials, `none` none; decisions depend only
    on the study, so the same history gives the same decisions, and a pruner built anew for
    each trial (as in each trial's process) decides as one built once."""

    @pytest.fixture
    def pruner_name(self) -> str:
        raise NotImplementedError

    def test_trials_end_complete_or_pruned_before_the_last_epoch(self, pruner_name: str
                                                                 ) -> None:
        for n_objectives in objective_counts(PRUNERS[pruner_name]):
            study = run_job(pruner_name, n_objectives)
            pruned = 0
            for t in study.trials:
                assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), t
                if t.state == TrialState.COMPLETE:
                    assert t.values is not None and len(t.values) == n_objectives
                else:
                    pruned += 1
                    assert 1 <= t.user_attrs["pruned_at_epoch"] < EPOCHS
            if pruner_name in MUST_STOP:
                assert pruned > 0, [(t.number, t.params) for t in study.trials]
            if pruner_name in NEVER_STOP:
                assert pruned == 0

    def test_the_same_history_gives_the_same_decisions(self, pruner_name: str) -> None:
        for n_objectives in objective_counts(PRUNERS[pruner_name]):
            once = run_job(pruner_name, n_objectives)
            again = run_job(pruner_name, n_objectives, fresh_pruner_per_trial=True)
            assert [t.state for t in again.trials] == [t.state for t in once.trials]
            assert [t.params for t in again.trials] == [t.params for t in once.trials]

    def test_rungs_only_where_early_values_rank_as_final_ones(self, pruner_name: str) -> None:
        """An entry with `rung_correlation` stops nothing until `min_trials_for_rungs` trials
        are complete, and then only at an epoch before the last whose reported values, over
        the trials complete by then, reach the correlation; at 0 its rungs are fixed again."""
        entry = PRUNERS[pruner_name]
        if "rung_correlation" not in entry.options:
            pytest.skip(f"{pruner_name} has fixed rungs")
        for n_objectives in objective_counts(entry):
            study = run_job(pruner_name, n_objectives)
            trials = study.trials
            assert all(t.state == TrialState.COMPLETE for t in trials[:MIN_TRIALS_FOR_RUNGS])
            for t in trials:
                if t.state != TrialState.PRUNED:
                    continue
                epoch = t.user_attrs["pruned_at_epoch"]
                estimate = fidelity_estimate(trials[: t.number], n_objectives)
                assert estimate is not None
                assert estimate.n_trials >= MIN_TRIALS_FOR_RUNGS
                assert estimate.min_spearman(epoch) >= RUNG_CORRELATION, (t.number, estimate)
                assert epoch < estimate.final_step
            # Demanding a perfect order on these curves, whose early values carry a bias
            # that fades, leaves no rung; 0 brings back rungs from the first epoch.
            strict = run_job(pruner_name, n_objectives, options={"rung_correlation": 1.0})
            assert all(t.state == TrialState.COMPLETE for t in strict.trials)
            fixed = run_job(pruner_name, n_objectives, options={"rung_correlation": 0})
            assert any(t.state == TrialState.PRUNED
                       for t in fixed.trials[:MIN_TRIALS_FOR_RUNGS]), pruner_name


class SchedulerTestCase:
    """What every Ray Tune scheduler of the registry keeps, through Ray's scheduler interface
    (`on_trial_add`, `on_trial_result`) with the metric and mode the ray backend gives it:
    each decision is one of Ray's (CONTINUE, PAUSE, STOP); successive halving stops some
    trials, FIFO none. PBT's exploits need a running Tune controller; here its perturbations
    are checked to stay in the space."""

    @pytest.fixture
    def scheduler_name(self) -> str:
        raise NotImplementedError

    def test_decisions_on_reported_epochs(self, scheduler_name: str) -> None:
        from ray.tune.experiment import Trial
        from ray.tune.schedulers import TrialScheduler

        from edgetune.search.backends.ray import _scheduler_metric

        entry = PRUNERS[scheduler_name]
        assert entry.ray is not None
        if entry.mutates:
            pytest.skip("PBT exploits through a running Tune controller")
        for n_objectives in objective_counts(entry):
            spec = job_spec(scheduler_name, n_objectives, backend="ray")
            scheduler = entry.ray(AlgorithmContext(spec, SPACE))
            metric, mode = _scheduler_metric(spec)
            assert scheduler.set_search_properties(metric, mode)
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=11))
            stopped = 0
            trials = []
            for number in range(N_TRIALS):
                params = suggest(study.ask(), SPACE)
                trial = Trial("function", config={"params": params}, stub=True,
                              trial_id=f"trial_{number}")
                scheduler.on_trial_add(None, trial)
                trial.set_status(Trial.RUNNING)  # as Tune does once the trial's actor starts
                trials.append((trial, params))
            decisions = (TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP)
            curves: dict[str, list[dict[str, Any]]] = {}
            for trial, params in trials:
                curve: list[dict[str, Any]] = []
                FUNCTION(spec.trainer).fit(params, report=partial(_record, curve))
                curves[trial.trial_id] = curve
            # Every trial's first epoch, as trials running side by side report it: the first
            # rung (ASHA's grace period). Past it, HyperBand's brackets pause trials that the
            # Tune controller resumes, which only a running Tune does (the ray end-to-end job).
            running = [trial for trial, _ in trials]
            for epoch in (1,):
                for trial in list(running):
                    result = curves[trial.trial_id][epoch - 1]
                    decision = scheduler.on_trial_result(None, trial, result)
                    assert decision in decisions, decision
                    if decision != TrialScheduler.CONTINUE:
                        running.remove(trial)
                        stopped += decision == TrialScheduler.STOP
            if scheduler_name in MUST_STOP:
                assert stopped > 0
            if scheduler_name in NEVER_STOP:
                assert stopped == 0

    def test_perturbed_parameters_stay_in_the_space(self, scheduler_name: str) -> None:
        entry = PRUNERS[scheduler_name]
        assert entry.ray is not None
        if not entry.mutates:
            pytest.skip(f"{scheduler_name} does not change a trial's parameters")
        from ray.tune.schedulers.pbt import _explore

        spec = job_spec(scheduler_name, 1, backend="ray")
        scheduler = entry.ray(AlgorithmContext(spec, SPACE))
        config: dict[str, Any] = {"params": {p.name: 1.0 for p in SPACE}}
        for _ in range(50):
            config, _ = _explore(
                config, scheduler._hyperparam_mutations, scheduler._resample_probability,
                scheduler._perturbation_factors, scheduler._custom_explore_fn,
            )
            for p in SPACE:
                assert p.can_take(config["params"][p.name]), (p.name, config["params"])
