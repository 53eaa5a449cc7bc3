"""A worker's trial slots: the worker-wide cap, the slots kept for new jobs, fair shares between
the jobs of one worker, and each tenant's limit counted over the whole database."""

from __future__ import annotations

import optuna
import pytest

from edgetune.search.capacity import TrialSlots
from edgetune.spec import JobSpec
from edgetune.storage import JobRepository, JobStatus, open_database, optuna_storage
from edgetune.storage.study_store import tenant_running_trials


def start(slots: TrialSlots, job: str, tenant: str, running: int) -> int:
    """Ask for slots as a job's loop does until refused; how many trials it runs then."""
    while slots.may_start(job, tenant, running):
        running += 1
    return running


def test_the_worker_cap_holds_over_all_jobs() -> None:
    slots = TrialSlots(max_trials=4)
    assert start(slots, "a", "t1", 0) == 4
    assert slots.free == 0
    assert not slots.may_start("b", "t2", 0)  # even a first trial waits for a free slot
    slots.leave("a")
    assert slots.free == 4 and slots.may_start("b", "t2", 0)


def test_a_big_job_leaves_the_spare_slot_to_a_new_one() -> None:
    slots = TrialSlots(max_trials=3, spare=1)
    assert start(slots, "big", "a", 0) == 2  # the third slot is kept
    assert slots.free == 1
    assert slots.may_start("small", "b", 0)  # the newcomer's first trial takes it at once
    assert not slots.may_start("small", "b", 1)
    assert slots.used == 3


def test_a_job_above_its_fair_share_yields_to_a_waiting_job() -> None:
    slots = TrialSlots(max_trials=4)
    assert start(slots, "big", "a", 0) == 4
    assert not slots.may_start("small", "b", 0)  # full: the small job waits
    # One of the big job's trials ends: it runs 3, above its share of 2 while `small` waits.
    assert not slots.may_start("big", "a", 3)
    assert slots.may_start("small", "b", 0)
    # Below its share, and nobody waiting, it may grow again into a slot left free.
    assert start(slots, "small", "b", 1) == 1  # none free: 3 + 1 + the one just granted
    assert slots.may_start("big", "a", 1)


def test_one_slot_keeps_none_spare() -> None:
    slots = TrialSlots(max_trials=1, spare=1)
    assert start(slots, "only", "a", 0) == 1


def test_a_tenant_limit_counts_what_the_database_says() -> None:
    in_database = {"a": 0, "b": 0}
    slots = TrialSlots(max_trials=10, tenant_max_trials=2,
                       count_tenant_trials=lambda tenant: in_database[tenant])
    assert slots.may_start("a1", "a", 0)
    in_database["a"] = 1  # the trial it started
    assert slots.may_start("a1", "a", 1)
    in_database["a"] = 2
    assert not slots.may_start("a1", "a", 2)
    assert not slots.may_start("a2", "a", 0)  # another job of the tenant: the same limit
    assert slots.may_start("b1", "b", 0)  # another tenant is not held up
    in_database["a"] = 3  # another worker started trials of `a`: no more here either
    assert not slots.may_start("a2", "a", 0)


def test_granted_slots_not_yet_in_the_database_count_against_the_tenant() -> None:
    slots = TrialSlots(max_trials=10, tenant_max_trials=2, count_tenant_trials=lambda _: 0)
    assert slots.may_start("a1", "a", 0)
    assert slots.may_start("a2", "a", 0)
    assert not slots.may_start("a3", "a", 0)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="`max_trials` is 0, but must be >= 1"):
        TrialSlots(max_trials=0)
    with pytest.raises(ValueError, match="`tenant_max_trials` is 0"):
        TrialSlots(max_trials=1, tenant_max_trials=0, count_tenant_trials=lambda _: 0)


def test_tenant_running_trials_counts_running_trials_of_running_jobs(database_url: str) -> None:
    db = open_database(database_url)
    jobs = JobRepository(db)
    try:
        def job(tenant: str, mode: str = "managed") -> str:
            spec = JobSpec.model_validate({
                "name": "count", "mode": mode, "seed": 0,
                "trainer": {"name": "function", "dataset": "sphere", "epochs": 1},
                "space": {"name": None, "params": [
                    {"type": "float", "name": "x0", "low": 0, "high": 1}]},
                "objectives": [{"name": "f1"}],
            })
            created = jobs.create(spec, tenant=tenant)
            if mode == "managed":
                assert jobs.claim("w", lease_s=60, skip=()) is not None
            return created.study_name

        storage = optuna_storage(db.url)
        for study_name, running, done in ((job("a"), 2, 1), (job("a"), 1, 0),
                                          (job("b"), 1, 0), (job("a", "ask-tell"), 3, 0)):
            study = optuna.load_study(study_name=study_name, storage=storage)
            for _ in range(done):
                study.tell(study.ask(), 0.0)
            for _ in range(running):
                study.ask()
        assert tenant_running_trials(db.engine, "a") == 3  # not the ask/tell job's
        assert tenant_running_trials(db.engine, "b") == 1
        assert tenant_running_trials(db.engine, "c") == 0
        # A job that ended no longer counts, whatever its study holds.
        ended = jobs.list(tenant="b")[0][0]
        jobs.finish(ended.id, "w", JobStatus.FAILED, "ended")
        assert tenant_running_trials(db.engine, "b") == 0
    finally:
        db.dispose()


def test_a_claim_prefers_the_tenant_with_the_fewest_running_trials(database_url: str) -> None:
    db = open_database(database_url)
    jobs = JobRepository(db)
    spec = JobSpec.model_validate({
        "name": "claim", "seed": 0,
        "trainer": {"name": "function", "dataset": "sphere", "epochs": 1},
        "space": {"name": None, "params": [{"type": "float", "name": "x0", "low": 0, "high": 1}]},
        "objectives": [{"name": "f1"}],
        "budget": {"n_trials": 100, "parallelism": 4},
    })
    try:
        big = jobs.create(spec, tenant="a")
        assert jobs.claim("w1", lease_s=60).id == big.id  # type: ignore[union-attr]
        study = optuna.load_study(study_name=big.study_name, storage=optuna_storage(db.url))
        for _ in range(2):
            study.ask()
        second_of_a = jobs.create(spec, tenant="a")
        small = jobs.create(spec, tenant="b")
        # The oldest job (a's running one) and an older queued one of `a` wait: `b` runs none.
        assert jobs.claim("w2", lease_s=60).id == small.id  # type: ignore[union-attr]
        # Then `a`'s queued job before joining `a`'s running one.
        assert jobs.claim("w2", lease_s=60, skip={small.id}).id == second_of_a.id  # type: ignore[union-attr]
        # Spare slots only start waiting jobs: none is left, and a's running one is not joined.
        assert jobs.claim("w3", lease_s=60, skip={small.id, second_of_a.id}, join=False) is None
        assert jobs.claim("w3", lease_s=60, skip={small.id, second_of_a.id}).id == big.id  # type: ignore[union-attr]
    finally:
        db.dispose()
