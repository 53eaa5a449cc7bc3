"""mo-asha: promotion by non-dominated rank and crowding, checked by hand, against a brute-force
reference, against Optuna's ASHA on one objective, and across a restart on sqlite."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from edgetune.search.schedulers._mo_asha import MOASHAPruner, report_values

ACC_LAT = ["maximize", "minimize"]  # accuracy, latency_ms


def make_study(directions=ACC_LAT, storage=None, study_name=None) -> optuna.Study:
    return optuna.create_study(
        directions=list(directions),
        storage=storage,
        study_name=study_name,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )


def judge(study, pruner, trial_id: int, step: int, vector) -> bool:
    report_values(study, trial_id, step, vector)
    return pruner.prune(study, study._storage.get_trial(trial_id))


def arrivals(vectors, *, directions=ACC_LAT, step: int = 1, **pruner_args) -> list[bool]:
    """Each vector is a new trial reaching `step`, one after another; True means pruned."""
    study = make_study(directions)
    pruner = MOASHAPruner(**pruner_args)
    return [judge(study, pruner, study.ask()._trial_id, step, v) for v in vectors]


# --- brute-force reference --------------------------------------------------------------------


def _dominates(a, b) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def _reference_order(rows: list[list[float]]) -> list[int]:
    """Indices of lower-is-better `rows` in NSGA-II selection order, ties by index."""
    rank = [-1] * len(rows)
    remaining = set(range(len(rows)))
    r = 0
    while remaining:
        front = {i for i in remaining if not any(_dominates(rows[j], rows[i]) for j in remaining)}
        for i in front:
            rank[i] = r
        remaining -= front
        r += 1
    crowd = [0.0] * len(rows)
    for r in set(rank):
        members = [i for i in range(len(rows)) if rank[i] == r]
        if len(members) <= 2:
            for i in members:
                crowd[i] = math.inf
            continue
        for k in range(len(rows[0])):
            ordered = sorted(members, key=lambda i: (rows[i][k], i))
            width = rows[ordered[-1]][k] - rows[ordered[0]][k]
            if width == 0:
                continue
            crowd[ordered[0]] = crowd[ordered[-1]] = math.inf
            for prev, i, nxt in zip(ordered, ordered[1:], ordered[2:], strict=False):
                crowd[i] += (rows[nxt][k] - rows[prev][k]) / width
    return sorted(range(len(rows)), key=lambda i: (rank[i], -crowd[i], i))


class ReferencePruner:
    """The algorithm of the brief, written plainly over Python lists; state kept in dicts."""

    def __init__(
        self,
        directions,
        *,
        min_resource=1,
        reduction_factor=3,
        min_early_stopping_rate=0,
        bootstrap_count=0,
    ):
        self.signs = [-1.0 if d == "maximize" else 1.0 for d in directions]
        self.r, self.eta, self.s, self.b = (
            min_resource,
            reduction_factor,
            min_early_stopping_rate,
            bootstrap_count,
        )
        self.records: dict[int, dict[int, list[float]]] = {}  # rung -> trial number -> vector

    def prune(self, number: int, step: int, vector: list[float]) -> bool:
        rung = sum(1 for k in self.records if number in self.records[k])
        while step >= self.r * self.eta ** (self.s + rung):
            if any(math.isnan(v) for v in vector):
                return True
            self.records.setdefault(rung, {})[number] = vector
            numbers = sorted(self.records[rung])
            if len(numbers) <= self.b:
                return True
            rows = [
                [s * v for s, v in zip(self.signs, self.records[rung][n], strict=True)]
                for n in numbers
            ]
            position = _reference_order(rows).index(numbers.index(number))
            if position >= max(1, len(numbers) // self.eta):
                return True
            rung += 1
        return False


# --- by hand ----------------------------------------------------------------------------------


def test_no_report_is_not_pruned():
    study = make_study()
    trial = study.ask()
    assert MOASHAPruner().prune(study, study._storage.get_trial(trial._trial_id)) is False


def test_first_trial_at_a_rung_is_promoted_even_when_poor():
    assert arrivals([[0.0, 1e9]]) == [False]


def test_dominated_trials_are_pruned_dominating_ones_promoted():
    vectors = [
        [0.50, 50.0],  # first: promoted
        [0.40, 60.0],  # dominated by the first
        [0.60, 40.0],  # dominates everything so far
        [0.45, 55.0],  # dominated by the first and the third
        [0.70, 30.0],  # dominates everything so far
    ]
    assert arrivals(vectors, reduction_factor=2) == [False, True, False, True, False]


# A chain in which each trial dominates the one before: trial k has rank 7 - k among the 8.
CHAIN = [[0.1 * k, 100.0 - 10 * k] for k in range(1, 9)]


@pytest.mark.parametrize(
    ("ninth", "pruned"),
    [
        ([0.95, 5.0], False),  # dominates all: 1st of 9
        ([0.75, 25.0], False),  # between k=8 and k=7: 2nd
        ([0.65, 35.0], False),  # between k=7 and k=6: 3rd, the last of 9 // 3 promoted
        ([0.55, 45.0], True),  # between k=6 and k=5: 4th
        ([0.05, 5.0], False),  # worst accuracy, best latency: on the front beside k=8, 2nd
        ([0.60, 40.0], True),  # equal to k=6, so on its front and after it: 4th
        ([0.05, 200.0], True),  # dominated by all
    ],
)
def test_nine_trials_at_a_rung_promote_exactly_the_top_third(ninth, pruned):
    decisions = arrivals([*CHAIN, ninth], reduction_factor=3)
    # Each chain trial dominates every earlier one, so each was first when it arrived.
    assert decisions[:8] == [False] * 8
    assert decisions[8] is pruned
    study_rows = [[-a, lat] for a, lat in [*CHAIN, ninth]]
    assert (_reference_order(study_rows).index(8) >= 3) is pruned


def test_crowding_breaks_ties_inside_the_front():
    # Two dominated trials pad the rung so that 6 // 2 = 3 are promoted; A and B, the front's
    # ends, have infinite crowding and take two places; the third goes to the less crowded of
    # the two middle points, whichever came first.
    pad = [[0.05, 95.0], [0.04, 96.0]]
    a, b, c = [0.10, 10.0], [0.90, 90.0], [0.45, 46.0]
    # Sorted by accuracy: A, C, D, B. C: (0.5 - 0.1) / 0.8 + (50 - 10) / 80 = 1.0;
    # D = (0.5, 50): (0.9 - 0.45) / 0.8 + (90 - 46) / 80 = 1.1125, so D, though later, wins.
    spread = arrivals([*pad, a, b, c, [0.50, 50.0]], reduction_factor=2)
    assert spread == [False, True, False, False, True, False]
    # D' = (0.85, 85) sits next to B: its crowding is 1.1125 while C's grows to 1.875.
    crowded = arrivals([*pad, a, b, c, [0.85, 85.0]], reduction_factor=2)
    assert crowded == [False, True, False, False, True, True]


@pytest.mark.parametrize(
    ("directions", "champion"),
    [
        (["maximize", "minimize"], [2.0, -1.0]),
        (["minimize", "maximize"], [-1.0, 2.0]),
        (["maximize", "maximize", "minimize"], [2.0, 2.0, -1.0]),
    ],
)
def test_a_trial_best_in_every_objective_is_never_pruned(directions, champion):
    rng = np.random.default_rng(1)
    study = make_study(directions)
    pruner = MOASHAPruner(min_resource=1, reduction_factor=3)
    for _ in range(40):
        trial_id = study.ask()._trial_id
        for step in range(1, 10):
            if judge(study, pruner, trial_id, step, rng.random(len(directions)).tolist()):
                break
    champion_id = study.ask()._trial_id
    assert not any(judge(study, pruner, champion_id, step, champion) for step in range(1, 10))
    attrs = study._storage.get_trial(champion_id).system_attrs
    assert [attrs[f"mo_asha:completed_rung_{k}"] for k in range(3)] == [champion] * 3


def test_rungs_follow_min_resource_and_early_stopping_rate():
    study = make_study()
    pruner = MOASHAPruner(min_resource=2, reduction_factor=2, min_early_stopping_rate=1)
    first = study.ask()._trial_id
    assert not judge(study, pruner, first, 4, [0.9, 1.0])  # first rung ends at 2 * 2 ** 1
    second = study.ask()._trial_id
    assert not judge(study, pruner, second, 3, [0.1, 9.0])  # dominated, but before its rung
    assert judge(study, pruner, second, 4, [0.1, 9.0])


def test_bootstrap_count_prunes_the_first_trials_at_a_rung():
    vectors = [[0.1 * k, 10.0 - k] for k in range(1, 5)]
    assert arrivals(vectors, bootstrap_count=2) == [True, True, False, False]


def test_nan_prunes_at_the_end_of_a_rung_and_infinity_too():
    assert arrivals([[math.nan, 1.0]]) == [True]
    assert arrivals([[0.5, math.inf]]) == [True]
    # As in Optuna's SuccessiveHalvingPruner, a value between rungs is not looked at.
    study = make_study()
    pruner = MOASHAPruner(min_resource=3)
    trial_id = study.ask()._trial_id
    assert not judge(study, pruner, trial_id, 1, [math.nan, 1.0])
    assert judge(study, pruner, trial_id, 3, [math.nan, 1.0])
    assert "mo_asha:completed_rung_0" not in study._storage.get_trial(trial_id).system_attrs


def test_one_trial_list_per_call_even_across_rungs(monkeypatch):
    study = make_study()
    pruner = MOASHAPruner(min_resource=1, reduction_factor=3)
    judge(study, pruner, study.ask()._trial_id, 9, [0.5, 5.0])
    calls = []
    real = study.get_trials

    def counting_get_trials(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(study, "get_trials", counting_get_trials)
    trial_id = study.ask()._trial_id
    assert not judge(study, pruner, trial_id, 9, [0.9, 1.0])  # rungs 0, 1 and 2 at once
    assert calls == [{"deepcopy": False}]
    attrs = study._storage.get_trial(trial_id).system_attrs
    assert {k for k in attrs if k.startswith("mo_asha:completed_rung_")} == {
        f"mo_asha:completed_rung_{k}" for k in range(3)
    }


def test_a_stale_trial_is_judged_again_without_competing_with_itself():
    # A caller may pass a FrozenTrial read before an earlier call recorded its rung; the trial
    # then redoes that rung and must meet its own record there only once.
    study = make_study()
    pruner = MOASHAPruner(reduction_factor=2)
    for vector in ([0.9, 1.0], [0.1, 9.0]):
        judge(study, pruner, study.ask()._trial_id, 1, vector)
    trial_id = study.ask()._trial_id
    report_values(study, trial_id, 1, [0.5, 5.0])
    stale = study._storage.get_trial(trial_id)
    # 2nd of 3, and 3 // 2 = 1 promoted; counted twice it would be 2nd of 4, with 2 promoted.
    assert pruner.prune(study, stale)
    assert pruner.prune(study, stale)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_resource": 0}, "The value of `min_resource` is 0, but must be >= 1."),
        ({"reduction_factor": 1}, "The value of `reduction_factor` is 1, but must be >= 2."),
        (
            {"min_early_stopping_rate": -1},
            "The value of `min_early_stopping_rate` is -1, but must be >= 0.",
        ),
        ({"bootstrap_count": -1}, "The value of `bootstrap_count` is -1, but must be >= 0."),
    ],
)
def test_constructor_checks(kwargs, message):
    with pytest.raises(ValueError) as e:
        MOASHAPruner(**kwargs)
    assert str(e.value) == message


def test_constructor_is_keyword_only():
    with pytest.raises(TypeError):
        MOASHAPruner(1)  # type: ignore[call-arg]


def test_report_values_checks_and_key():
    study = make_study()
    trial_id = study.ask()._trial_id
    with pytest.raises(ValueError, match="2 objectives, but 3 values"):
        report_values(study, trial_id, 0, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="`step` is -1"):
        report_values(study, trial_id, -1, [1.0, 2.0])
    with pytest.raises(TypeError):
        report_values(study, trial_id, 1.5, [1.0, 2.0])  # type: ignore[arg-type]
    # What a training loop has at hand: numpy scalars.
    report_values(study, trial_id, np.int64(7), [np.float64(0.5), np.float32(3.0)])  # type: ignore[arg-type,list-item]
    assert study._storage.get_trial(trial_id).system_attrs["mo_asha:values:7"] == [0.5, 3.0]


# --- randomized -------------------------------------------------------------------------------


def run_events(study, pruner, events, trial_ids) -> dict[int, int | None]:
    """Play (trial index, step, vector) events; a pruned trial takes no further events.

    Returns, per trial index, the step at which it was pruned, or None.
    """
    pruned: dict[int, int | None] = {}
    for index, step, vector in events:
        if pruned.get(index) is not None:
            continue
        if index not in trial_ids:
            trial_ids[index] = study.ask()._trial_id
        pruned.setdefault(index, None)
        if judge(study, pruner, trial_ids[index], step, vector):
            pruned[index] = step
    return pruned


def random_events(rng, n_trials, n_steps, n_objectives, concurrency=4):
    """Interleaved steps of `concurrency` trials at a time; values on a coarse grid for ties.

    A trial's step 0 comes when it starts, so trial indices are also the study's trial numbers.
    """
    events = []
    next_step: dict[int, int] = {}
    pending = list(range(n_trials))
    active: list[int] = []

    def emit(index: int) -> None:
        events.append((index, next_step[index], (rng.integers(0, 6, n_objectives) / 5).tolist()))
        next_step[index] += 1

    while pending or active:
        while pending and len(active) < concurrency:
            active.append(pending.pop(0))
            next_step[active[-1]] = 0
            emit(active[-1])
        index = active[int(rng.integers(len(active)))]
        emit(index)
        if next_step[index] == n_steps:
            active.remove(index)
    return events


@pytest.mark.parametrize(
    ("seed", "directions", "args"),
    [
        (0, ["maximize", "minimize"], {}),
        (1, ["minimize", "minimize", "maximize"], {"reduction_factor": 2}),
        (2, ["maximize", "minimize"], {"min_resource": 2, "bootstrap_count": 2}),
        (3, ["minimize"], {"reduction_factor": 4, "min_early_stopping_rate": 1}),
    ],
)
def test_matches_brute_force_reference(seed, directions, args):
    rng = np.random.default_rng(seed)
    # About 500 vectors judged and 200 rung decisions per case.
    events = random_events(rng, n_trials=150, n_steps=10, n_objectives=len(directions))
    study = make_study(directions)
    got = run_events(study, MOASHAPruner(**args), events, {})

    reference = ReferencePruner(directions, **args)
    expected: dict[int, int | None] = {}
    for index, step, vector in events:
        if expected.get(index) is not None:
            continue
        expected.setdefault(index, None)
        if reference.prune(index, step, vector):
            expected[index] = step
    assert got == expected
    # Not vacuous: both outcomes occur.
    assert 0 < sum(v is not None for v in got.values()) < len(got)


def test_one_objective_with_distinct_values_is_optunas_asha():
    rng = np.random.default_rng(4)
    events = random_events(rng, n_trials=60, n_steps=10, n_objectives=1)
    # Distinct values, so that Optuna's promotion of every tie does not differ from ours.
    events = [(i, s, [float(v[0]) + 1e-6 * n]) for n, (i, s, v) in enumerate(events)]
    got = run_events(make_study(["minimize"]), MOASHAPruner(reduction_factor=3), events, {})

    sha = optuna.create_study(
        direction="minimize",
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    )
    trials: dict[int, optuna.Trial] = {}
    expected: dict[int, int | None] = {}
    for index, step, (value,) in events:
        if expected.get(index) is not None:
            continue
        trial = trials.setdefault(index, sha.ask())
        expected.setdefault(index, None)
        trial.report(value, step)
        if trial.should_prune():
            expected[index] = step
    assert got == expected


# --- storage ----------------------------------------------------------------------------------


def test_decisions_survive_a_restart(tmp_path):
    rng = np.random.default_rng(5)
    events = random_events(rng, n_trials=16, n_steps=5, n_objectives=2, concurrency=3)
    args = {"min_resource": 1, "reduction_factor": 2}

    uninterrupted = run_events(make_study(), MOASHAPruner(**args), events, {})

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = make_study(storage=url, study_name="restart")
    trial_ids: dict[int, int] = {}
    half = len(events) // 2
    before = run_events(study, MOASHAPruner(**args), events[:half], trial_ids)
    # A new process: the study loaded afresh, a new pruner, and trials that were running
    # before the restart go on after it under the same ids.
    del study
    loaded = optuna.load_study(study_name="restart", storage=url)
    after = run_events(
        loaded,
        MOASHAPruner(**args),
        [e for e in events[half:] if before.get(e[0]) is None],
        trial_ids,
    )
    assert {**before, **after} == uninterrupted
    assert any(step is not None for step in after.values())

    by_id = {t._trial_id: t for t in loaded.get_trials(deepcopy=False)}
    for index, step in uninterrupted.items():
        attrs = by_id[trial_ids[index]].system_attrs
        last = step if step is not None else 4
        # Rungs end at steps 1, 2 and 4; each records the vector reported at its end.
        ends = [end for end in (1, 2, 4) if last >= end]
        assert {k for k in attrs if k.startswith("mo_asha:completed_rung_")} == {
            f"mo_asha:completed_rung_{k}" for k in range(len(ends))
        }
        for k, end in enumerate(ends):
            assert attrs[f"mo_asha:completed_rung_{k}"] == attrs[f"mo_asha:values:{end}"]


# --- end to end -------------------------------------------------------------------------------


def test_end_to_end_ask_and_tell_loop():
    study = make_study()
    pruner = MOASHAPruner(min_resource=1, reduction_factor=3)
    n_trials, n_steps, steps_run = 30, 9, 0
    for _ in range(n_trials):
        trial = study.ask()
        width = trial.suggest_float("width", 0.0, 1.0)  # more accurate, and slower
        waste = trial.suggest_float("waste", 0.0, 1.0)  # worse at both
        latency_ms = 10.0 + 20.0 * width + 10.0 * waste
        vector = [0.0, latency_ms]
        pruned = False
        for step in range(1, n_steps + 1):
            steps_run += 1
            accuracy = (1 - math.exp(-step / 3)) * (0.5 + 0.5 * width) * (1 - 0.5 * waste)
            vector = [accuracy, latency_ms]
            report_values(study, trial._trial_id, step, vector)
            if pruner.prune(study, study._storage.get_trial(trial._trial_id)):
                study.tell(trial, state=TrialState.PRUNED)
                pruned = True
                break
        if not pruned:
            study.tell(trial, vector)

    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states.count(TrialState.PRUNED) > 0
    assert states.count(TrialState.COMPLETE) > 0
    assert len(study.best_trials) > 0
    # Seeded, so exact: 100 of the 270 steps ran.
    assert steps_run < n_trials * n_steps // 2
