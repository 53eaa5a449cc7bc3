"""The probe queue's contract, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from racing import race

from edgetune.errors import ConflictError, InvalidSpecError, NotFoundError
from edgetune.storage import (
    Device,
    DeviceRepository,
    Probe,
    ProbeRepository,
    ProbeStatus,
    open_database,
    probe_cache_key,
    utcnow,
)
from edgetune.storage.artifacts import UploadQuotaExceeded, UploadRepository, artifact_path
from edgetune.storage.models import Upload
from edgetune.storage.probes import MAX_REASON_CHARS

SHA = "ab" * 32
CONFIG: dict[str, Any] = {"runtime": "onnxruntime", "input_shape": [3, 32, 32], "batch_size": 1,
                          "threads": 2, "warmup": 5, "min_repeats": 20, "min_time_s": 0.5}
RESULT = {"p50_ms": 1.25, "p90_ms": 1.5, "mean_ms": 1.3, "std_ms": 0.1, "n": 200}


@pytest.fixture
def probes(database_url: str) -> Iterator[ProbeRepository]:
    db = open_database(database_url)
    yield ProbeRepository(db)
    db.dispose()


@pytest.fixture
def device(probes: ProbeRepository) -> Device:
    return DeviceRepository(probes.db).register(
        "pixel", runtimes=["onnxruntime", "torchscript"], hardware={"cpu": "arm"}, threads=2
    )


def request(probes: ProbeRepository, device: Device, sha: str = SHA, **kw: Any) -> Probe:
    return probes.request(device.id, artifact_sha256=sha, **{**CONFIG, **kw})


def expire(probes: ProbeRepository, probe_id: str) -> None:
    """End a probe's lease now, as time would: no sleeping, nothing to race."""
    with probes.db.engine.begin() as conn:
        conn.execute(sa.update(Probe).where(Probe.id == probe_id)
                     .values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_a_request_queues_a_pending_probe_with_its_cache_key(
    probes: ProbeRepository, device: Device
) -> None:
    probe = request(probes, device, sha=SHA.upper(), min_time_s=1)
    got = probes.get(probe.id, tenant="default")
    assert got.status == ProbeStatus.PENDING and got.attempts == 0 and got.result is None
    assert got.artifact_sha256 == SHA and got.input_shape == [3, 32, 32]
    assert got.tenant == device.tenant and got.created_at.tzinfo is not None
    assert got.cache_key == probe_cache_key(device.id, artifact_sha256=SHA,
                                            **{**CONFIG, "min_time_s": 1.0})
    with pytest.raises(NotFoundError):
        probes.get(probe.id, tenant="globex")
    with pytest.raises(NotFoundError):
        probes.get("nope")


def test_the_cache_key_covers_every_part_of_the_config(device: Device) -> None:
    key = probe_cache_key(device.id, artifact_sha256=SHA, **CONFIG)
    changes = {"runtime": "torchscript", "input_shape": [3, 32, 33], "batch_size": 2,
               "threads": 1, "warmup": 4, "min_repeats": 21, "min_time_s": 0.25}
    others = {probe_cache_key(device.id, artifact_sha256=SHA, **{**CONFIG, k: v})
              for k, v in changes.items()}
    others.add(probe_cache_key("other-device", artifact_sha256=SHA, **CONFIG))
    others.add(probe_cache_key(device.id, artifact_sha256="cd" * 32, **CONFIG))
    assert len(others) == len(changes) + 2 and key not in others


def test_identical_requests_share_a_live_probe_and_a_done_one_answers_them(
    probes: ProbeRepository, device: Device
) -> None:
    first = request(probes, device)
    assert request(probes, device).id == first.id  # pending: shared
    assert probes.lease(device.id, "agent", lease_s=60) is not None
    assert request(probes, device).id == first.id  # leased: shared
    different = request(probes, device, threads=1)
    assert different.id != first.id
    probes.complete(first.id, "agent", RESULT)
    cached = request(probes, device)
    assert cached.id == first.id and cached.status == ProbeStatus.DONE
    assert cached.result == RESULT
    assert probes.list(status="pending")[1] == 1  # only `different`


def test_a_failed_probe_is_not_a_cached_answer(probes: ProbeRepository, device: Device) -> None:
    failed = request(probes, device)
    probes.lease(device.id, "agent", lease_s=60)
    probes.fail(failed.id, "agent", "onnxruntime: invalid model")
    again = request(probes, device)
    assert again.id != failed.id and again.status == ProbeStatus.PENDING
    assert probes.get(failed.id).status == ProbeStatus.FAILED


def test_racing_identical_requests_make_one_probe(probes: ProbeRepository, device: Device) -> None:
    ids = race(lambda _: request(probes, device).id)
    assert len(ids) == 8 and len(set(ids)) == 1
    assert probes.list()[1] == 1


def test_requests_are_checked_and_scoped_to_the_devices_tenant(
    probes: ProbeRepository, device: Device
) -> None:
    with pytest.raises(NotFoundError):
        request(probes, device, tenant="globex")
    with pytest.raises(NotFoundError):
        probes.request("nope", artifact_sha256=SHA, **CONFIG)
    with pytest.raises(InvalidSpecError, match="does not offer runtime 'torch'") as raised:
        request(probes, device, runtime="torch")
    assert raised.value.field == "runtime"
    bad = [("artifact_sha256", {"sha": "xyz"}), ("artifact_sha256", {"sha": "a" * 63}),
           ("input_shape", {"input_shape": []}), ("input_shape", {"input_shape": [3, 0]}),
           ("input_shape", {"input_shape": "3x32"}), ("batch_size", {"batch_size": 0}),
           ("threads", {"threads": 0}), ("warmup", {"warmup": -1}),
           ("min_repeats", {"min_repeats": 0}), ("min_time_s", {"min_time_s": -0.1}),
           ("min_time_s", {"min_time_s": float("inf")})]
    for field, kw in bad:
        with pytest.raises(InvalidSpecError) as raised:
            request(probes, device, **kw)
        assert raised.value.field == field, kw
    assert probes.list()[1] == 0


def test_lease_takes_the_oldest_pending_probe_of_the_device(
    probes: ProbeRepository, device: Device
) -> None:
    first, second = request(probes, device), request(probes, device, sha="cd" * 32)
    other = DeviceRepository(probes.db).register("other", runtimes=["onnxruntime"],
                                                 hardware={}, threads=1)
    request(probes, other)
    leased = probes.lease(device.id, "agent-1", lease_s=60)
    assert leased is not None and leased.id == first.id
    assert leased.status == ProbeStatus.LEASED and leased.lease_owner == "agent-1"
    assert leased.attempts == 1 and leased.lease_expires_at is not None
    assert leased.lease_expires_at > utcnow()
    nxt = probes.lease(device.id, "agent-2", lease_s=60)
    assert nxt is not None and nxt.id == second.id
    assert probes.lease(device.id, "agent-3", lease_s=60) is None  # the other device's stays
    with pytest.raises(ValueError, match="lease_s"):
        probes.lease(device.id, "agent", lease_s=0)


@pytest.mark.parametrize("n_probes", [1, 3])
def test_racing_agents_never_take_the_same_probe(
    probes: ProbeRepository, device: Device, n_probes: int
) -> None:
    queued = {request(probes, device, sha=f"{i:064x}").id for i in range(n_probes)}
    leased = race(lambda i: probes.lease(device.id, f"agent-{i}", lease_s=60))
    taken = [(probe.id, probe.lease_owner or "") for probe in leased if probe is not None]
    assert len(taken) == n_probes and {probe_id for probe_id, _ in taken} == queued
    for probe_id, owner in taken:
        got = probes.get(probe_id)
        assert got.lease_owner == owner and got.attempts == 1


def test_an_expired_lease_goes_to_another_agent_and_counts_the_attempt(
    probes: ProbeRepository, device: Device
) -> None:
    probe = request(probes, device)
    assert probes.lease(device.id, "killed", lease_s=60) is not None
    assert probes.lease(device.id, "other", lease_s=60) is None  # not expired yet
    expire(probes, probe.id)
    again = probes.lease(device.id, "other", lease_s=60)
    assert again is not None and again.id == probe.id
    assert again.lease_owner == "other" and again.attempts == 2
    assert again.status == ProbeStatus.LEASED


def test_only_the_holder_renews_its_lease_and_a_renewed_lease_is_not_taken_over(
    probes: ProbeRepository, device: Device
) -> None:
    probe = request(probes, device)
    leased = probes.lease(device.id, "measuring", lease_s=1)
    assert leased is not None and leased.lease_expires_at is not None
    renewed = probes.renew(probe.id, "measuring", lease_s=60)
    assert renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > leased.lease_expires_at
    assert probes.lease(device.id, "other", lease_s=60) is None
    with pytest.raises(ConflictError, match="only the holder"):
        probes.renew(probe.id, "other", lease_s=60)
    # A dead agent renews nothing: its lease runs out and another agent takes the probe.
    expire(probes, probe.id)
    again = probes.lease(device.id, "other", lease_s=60)
    assert again is not None and again.attempts == 2
    with pytest.raises(ConflictError, match="only the holder"):
        probes.renew(probe.id, "measuring", lease_s=60)


def test_a_probe_whose_agents_keep_dying_fails_at_the_attempt_cap(
    probes: ProbeRepository, device: Device
) -> None:
    probe = request(probes, device)
    for attempt in range(1, 4):
        leased = probes.lease(device.id, f"agent-{attempt}", lease_s=60)
        assert leased is not None and leased.id == probe.id and leased.attempts == attempt
        expire(probes, probe.id)
    assert probes.lease(device.id, "agent-4", lease_s=60) is None
    failed = probes.get(probe.id)
    assert failed.status == ProbeStatus.FAILED and failed.attempts == 3
    assert failed.error == "the device's agents stopped answering while measuring, 3 times"
    assert failed.finished_at is not None
    assert request(probes, device).id != probe.id  # asking again measures again


def test_the_attempt_cap_is_a_setting_and_waiting_trials_see_it(
    probes: ProbeRepository, device: Device
) -> None:
    once = ProbeRepository(probes.db, max_attempts=1)
    probe = request(once, device)
    assert once.lease(device.id, "agent", lease_s=60) is not None
    expire(once, probe.id)
    # No agent polls the device any more; the waiting trial still learns why.
    waited = once.wait(probe.id, timeout_s=30, poll_s=0.01)
    assert waited.status == ProbeStatus.FAILED and "1 times" in (waited.error or "")
    with pytest.raises(ValueError, match="max_attempts"):
        ProbeRepository(probes.db, max_attempts=0)


def test_complete_stores_the_result_once(probes: ProbeRepository, device: Device) -> None:
    probe = request(probes, device)
    probes.lease(device.id, "agent", lease_s=60)
    extra = {**RESULT, "threads": 2, "hardware": {"cpu": "arm"}, "n": 200}
    done = probes.complete(probe.id, "agent", extra, tenant="default")
    assert done.status == ProbeStatus.DONE and done.result == extra
    assert done.finished_at is not None and done.lease_expires_at is None
    assert done.lease_owner == "agent"
    # The agent retries its POST (with a different body, even): nothing changes.
    again = probes.complete(probe.id, "agent", {**RESULT, "p50_ms": 9.0, "p90_ms": 9.0})
    assert again.status == ProbeStatus.DONE and again.result == extra
    assert again.finished_at == done.finished_at
    # Nor does a failure reported afterwards.
    assert probes.fail(probe.id, "agent", "too late").status == ProbeStatus.DONE
    assert probes.get(probe.id).error is None
    with pytest.raises(NotFoundError):
        probes.complete(probe.id, "agent", RESULT, tenant="globex")
    with pytest.raises(NotFoundError):
        probes.complete("nope", "agent", RESULT)


def test_a_probe_nobody_leased_cannot_be_reported(probes: ProbeRepository,
                                                  device: Device) -> None:
    probe = request(probes, device)
    with pytest.raises(ConflictError, match="not leased"):
        probes.complete(probe.id, "agent", RESULT)
    with pytest.raises(ConflictError, match="not leased"):
        probes.fail(probe.id, "agent", "no")
    assert probes.get(probe.id).status == ProbeStatus.PENDING


def test_only_the_lease_holder_completes(probes: ProbeRepository, device: Device) -> None:
    # The slow agent's lease expires and another agent takes the probe over: the slow one's
    # result is refused (a result nobody holding the lease asked for cannot be told from a
    # forged one, and would be served from the cache), the holder's is stored.
    probe = request(probes, device)
    probes.lease(device.id, "slow", lease_s=60)
    expire(probes, probe.id)
    assert probes.lease(device.id, "fast", lease_s=60) is not None
    with pytest.raises(ConflictError, match="only the holder"):
        probes.complete(probe.id, "slow", RESULT)
    assert probes.get(probe.id).status == ProbeStatus.LEASED
    other = {**RESULT, "p50_ms": 2.0, "p90_ms": 2.5}
    done = probes.complete(probe.id, "fast", other)
    assert done.result == other and done.lease_owner == "fast"
    # Once done, only the holder's retry is answered (unchanged); anyone else is refused.
    assert probes.complete(probe.id, "fast", RESULT).result == other
    with pytest.raises(ConflictError, match="only the holder"):
        probes.complete(probe.id, "slow", RESULT)
    # An agent that never leased it at all: refused, and nothing is cached.
    forged = request(probes, device, sha="cd" * 32)
    probes.lease(device.id, "agent", lease_s=60)
    with pytest.raises(ConflictError, match="only the holder"):
        probes.complete(forged.id, "forger", {**RESULT, "p50_ms": 0.001, "p90_ms": 0.001})
    assert probes.get(forged.id).status == ProbeStatus.LEASED
    assert probes.get(forged.id).result is None


def test_fail_records_the_reason_and_only_the_lease_holder_fails(
    probes: ProbeRepository, device: Device
) -> None:
    probe = request(probes, device)
    probes.lease(device.id, "slow", lease_s=60)
    expire(probes, probe.id)
    probes.lease(device.id, "fast", lease_s=60)
    # The agent that lost its lease does not fail the attempt of the one holding it.
    with pytest.raises(ConflictError, match="only the holder"):
        probes.fail(probe.id, "slow", "out of memory")
    kept = probes.get(probe.id)
    assert kept.status == ProbeStatus.LEASED and kept.lease_owner == "fast"
    failed = probes.fail(probe.id, "fast", "onnxruntime: invalid model", tenant="default")
    assert failed.status == ProbeStatus.FAILED and failed.error == "onnxruntime: invalid model"
    assert failed.finished_at is not None and failed.result is None
    # Final: failing again, or a late result, changes nothing.
    assert probes.fail(probe.id, "fast", "again").error == "onnxruntime: invalid model"
    with pytest.raises(ConflictError):
        probes.complete(probe.id, "slow", RESULT)
    assert probes.get(probe.id).result is None
    with pytest.raises(InvalidSpecError, match="reason"):
        probes.fail(probe.id, "fast", " ")


def test_a_failure_reason_is_kept_printable_and_short(probes: ProbeRepository,
                                                      device: Device) -> None:
    probe = request(probes, device)
    probes.lease(device.id, "agent", lease_s=60)
    secret = "s3cr3t-token-" * 400
    failed = probes.fail(probe.id, "agent", f"boom\x00\x1b[31m\n{secret}")
    assert failed.error is not None and len(failed.error) <= MAX_REASON_CHARS
    assert failed.error.isprintable() and failed.error.startswith("boom")


def test_an_input_over_the_bound_is_refused_naming_the_field(probes: ProbeRepository,
                                                             device: Device) -> None:
    bounded = ProbeRepository(probes.db, max_input_elements=1000)
    with pytest.raises(InvalidSpecError, match=r"input_shape.*at most 1,000") as excinfo:
        bounded.request(device.id, artifact_sha256="ab" * 32, runtime="onnxruntime",
                        input_shape=[20000, 20000], batch_size=1, threads=1, warmup=0,
                        min_repeats=1, min_time_s=0.0)
    assert excinfo.value.field == "input_shape"
    # At the bound is fine.
    assert bounded.request(device.id, artifact_sha256="ab" * 32, runtime="onnxruntime",
                           input_shape=[10, 10], batch_size=10, threads=1, warmup=0,
                           min_repeats=1, min_time_s=0.0).status == ProbeStatus.PENDING


def test_wait_returns_the_probe_as_it_is_when_time_is_up(
    probes: ProbeRepository, device: Device
) -> None:
    probe = request(probes, device)
    waited = probes.wait(probe.id, timeout_s=0.05, poll_s=0.01)
    assert waited.id == probe.id and waited.status == ProbeStatus.PENDING
    assert probes.wait(probe.id, timeout_s=0, poll_s=0.01).status == ProbeStatus.PENDING
    with pytest.raises(NotFoundError):
        probes.wait("nope", timeout_s=0, poll_s=0.01)
    with pytest.raises(ValueError, match="poll_s"):
        probes.wait(probe.id, timeout_s=1, poll_s=0)


def test_wait_returns_once_an_agent_reports(probes: ProbeRepository, device: Device) -> None:
    probe = request(probes, device)
    leased = threading.Event()

    def agent() -> None:
        taken = probes.lease(device.id, "agent", lease_s=60)
        assert taken is not None
        leased.set()
        probes.complete(taken.id, "agent", RESULT)

    thread = threading.Thread(target=agent)
    thread.start()
    try:
        # Generous: the machine may be busy; the wait ends when the result lands.
        done = probes.wait(probe.id, timeout_s=120, poll_s=0.02)
    finally:
        thread.join()
    assert leased.is_set()
    assert done.status == ProbeStatus.DONE and done.result == RESULT


def test_history_is_the_devices_done_probes_newest_first(
    probes: ProbeRepository, device: Device
) -> None:
    shas = [f"{i:064x}" for i in range(4)]
    for sha in shas:
        request(probes, device, sha=sha)
    for i in range(3):
        taken = probes.lease(device.id, "agent", lease_s=60)
        assert taken is not None
        if i == 1:
            probes.fail(taken.id, "agent", "broken")
        else:
            probes.complete(taken.id, "agent", {**RESULT, "p50_ms": float(i), "p90_ms": 9.0})
    history = probes.history(device.id)
    assert [p.artifact_sha256 for p in history] == [shas[2], shas[0]]
    assert [p.artifact_sha256 for p in probes.history(device.id, limit=1)] == [shas[2]]
    assert probes.history("nope") == []


@pytest.mark.parametrize(("result", "field"), [
    ({k: v for k, v in RESULT.items() if k != "p50_ms"}, "result.p50_ms"),
    ({**RESULT, "p90_ms": float("nan")}, "result.p90_ms"),
    ({**RESULT, "mean_ms": float("inf")}, "result.mean_ms"),
    ({**RESULT, "std_ms": -0.1}, "result.std_ms"),
    ({**RESULT, "p50_ms": "1.2"}, "result.p50_ms"),
    ({**RESULT, "p90_ms": 1.0}, "result.p90_ms"),  # below p50
    ({**RESULT, "n": 0}, "result.n"),
    ({**RESULT, "n": 2.5}, "result.n"),
    ({**RESULT, "n": True}, "result.n"),
    ({**RESULT, "extra": float("nan")}, "result"),
    ({**RESULT, "extra": object()}, "result"),
    ([1.0, 1.5], "result"),
])
def test_invalid_results_are_refused_naming_the_field(
    probes: ProbeRepository, device: Device, result: Any, field: str
) -> None:
    probe = request(probes, device)
    probes.lease(device.id, "agent", lease_s=60)
    with pytest.raises(ValueError) as raised:
        probes.complete(probe.id, "agent", result)
    assert isinstance(raised.value, InvalidSpecError) and raised.value.field == field
    got = probes.get(probe.id)
    assert got.status == ProbeStatus.LEASED and got.result is None


def age(probes: ProbeRepository, probe_id: str, seconds: float) -> None:
    """Make a probe as old as if it had been requested `seconds` ago."""
    with probes.db.engine.begin() as conn:
        conn.execute(sa.update(Probe).where(Probe.id == probe_id)
                     .values(created_at=utcnow() - timedelta(seconds=seconds)))


def age_upload(probes: ProbeRepository, sha: str, seconds: float) -> None:
    with probes.db.engine.begin() as conn:
        conn.execute(sa.update(Upload).where(Upload.artifact_sha256 == sha)
                     .values(created_at=utcnow() - timedelta(seconds=seconds)))


def test_uploads_count_against_a_quota_and_are_collected_once_no_probe_names_them(
    probes: ProbeRepository, device: Device, tmp_path: Path
) -> None:
    uploads = UploadRepository(probes.db)
    limits = {"max_count": 2, "max_bytes": 1000}
    files = {}
    for sha in ("ab" * 32, "cd" * 32):
        uploads.reserve("default", sha, 400, **limits)
        files[sha] = artifact_path(tmp_path, sha, "onnx")
        files[sha].write_bytes(b"x" * 400)
        request(probes, device, sha=sha)
    uploads.reserve("default", "ab" * 32, 400, **limits)  # held already: counted once
    assert uploads.usage("default").count == 2 and uploads.usage("default").size_bytes == 800
    # A third model, or more bytes, is refused.
    with pytest.raises(UploadQuotaExceeded, match="upload_quota_count 2"):
        uploads.reserve("default", "ef" * 32, 1, **limits)
    with pytest.raises(UploadQuotaExceeded, match="upload_quota_bytes"):
        uploads.reserve("default", "ef" * 32, 300, max_count=5, max_bytes=1000)
    assert uploads.usage("default").count == 2  # nothing refused was counted
    # Another tenant has a quota of its own.
    uploads.reserve("globex", "ef" * 32, 900, **limits)

    # A trial's own artifact has no upload row: never collected.
    trial_file = artifact_path(tmp_path, "12" * 32, "onnx")
    trial_file.write_bytes(b"trial")
    assert uploads.collect(tmp_path, grace_s=0) == []  # probes name both uploads
    DeviceRepository(probes.db).delete(device.id)
    # Reserved just now: its probe may be on its way, the grace keeps row and file.
    assert uploads.collect(tmp_path, grace_s=3600) == []
    assert uploads.usage("default").count == 2
    for sha in files:
        age_upload(probes, sha, 120)
    # Files written just now (a trial may be storing the same bytes): kept with their rows,
    # looked at again next time.
    assert uploads.collect(tmp_path, grace_s=60) == []
    assert all(path.exists() for path in files.values())
    assert uploads.usage("default").count == 2
    for path in files.values():
        os.utime(path, (0, 0))
    assert sorted(uploads.collect(tmp_path, grace_s=60)) == sorted(files)
    assert not any(path.exists() for path in files.values())
    assert uploads.usage("default").count == 0
    assert trial_file.exists()


def test_bytes_another_tenant_still_measures_are_kept_for_it(
    probes: ProbeRepository, device: Device, tmp_path: Path
) -> None:
    uploads = UploadRepository(probes.db)
    other = DeviceRepository(probes.db).register("other", runtimes=["onnxruntime"], hardware={},
                                                 threads=1, tenant="globex")
    path = artifact_path(tmp_path, SHA, "onnx")
    path.write_bytes(b"x" * 400)
    os.utime(path, (0, 0))
    for tenant, on in (("default", device), ("globex", other)):
        uploads.reserve(tenant, SHA, 400, max_count=5, max_bytes=10_000)
        request(probes, on)
        age_upload(probes, SHA, 120)
    DeviceRepository(probes.db).delete(device.id)
    assert uploads.collect(tmp_path, grace_s=60) == []
    assert path.exists()
    assert uploads.usage("default").count == 0 and uploads.usage("globex").count == 1


def test_racing_uploads_cannot_pass_the_quota_together(probes: ProbeRepository) -> None:
    # Each racer checks and counts at once; a check made before the others counted would let
    # all of them in.
    uploads = UploadRepository(probes.db)
    shas = [f"{i:064x}" for i in range(8)]

    def upload(i: int) -> bool:
        try:
            uploads.reserve("default", shas[i], 10, max_count=3, max_bytes=10_000)
        except UploadQuotaExceeded:
            return False
        return True

    admitted = race(upload, len(shas))
    assert sum(admitted) == 3
    assert uploads.usage("default").count == 3


def test_a_probe_nobody_measures_expires_with_the_reason_and_frees_its_upload(
    probes: ProbeRepository, device: Device, tmp_path: Path
) -> None:
    expiring = ProbeRepository(probes.db, expire_s=600)
    uploads = UploadRepository(probes.db)
    uploads.reserve("default", SHA, 400, max_count=1, max_bytes=1000)
    artifact_path(tmp_path, SHA, "onnx").write_bytes(b"x" * 400)
    never_taken = request(expiring, device)
    taken = request(expiring, device, sha="cd" * 32)
    expiring.lease(device.id, "agent", lease_s=60)  # the oldest: never_taken
    held = expiring.lease(device.id, "other", lease_s=60)
    assert held is not None and held.id == taken.id
    for probe in (never_taken, taken):
        age(probes, probe.id, 601)
    expire(probes, never_taken.id)  # its agent died: the lease ran out
    assert probes.get(never_taken.id).status == ProbeStatus.LEASED  # no expiry without one

    failed = expiring.get(never_taken.id, tenant="default")
    assert failed.status == ProbeStatus.FAILED and failed.result is None
    assert "within 600 s" in failed.error and "probe_expire_s" in failed.error
    # A live lease is let run, and its holder's report still lands.
    assert expiring.get(taken.id).status == ProbeStatus.LEASED
    assert expiring.complete(taken.id, "other", RESULT).status == ProbeStatus.DONE
    # Failed since it was reserved: collected at once, the quota of one is free again.
    os.utime(artifact_path(tmp_path, SHA, "onnx"), (0, 0))
    assert uploads.collect(tmp_path, grace_s=60) == [SHA]
    assert uploads.usage("default").count == 0
    uploads.reserve("default", "ef" * 32, 400, max_count=1, max_bytes=1000)
    # Asked again, the model is queued anew.
    again = request(expiring, device)
    assert again.id != never_taken.id and again.status == ProbeStatus.PENDING


@pytest.mark.parametrize("reader", ["list", "lease", "request", "wait"])
def test_every_reader_of_the_queue_expires_overdue_probes(
    probes: ProbeRepository, device: Device, reader: str
) -> None:
    expiring = ProbeRepository(probes.db, expire_s=60)
    probe = request(expiring, device)
    age(probes, probe.id, 61)
    if reader == "list":
        rows, _ = expiring.list(tenant="default", status="pending")
        assert rows == []
    elif reader == "lease":
        assert expiring.lease(device.id, "agent", lease_s=60) is None
    elif reader == "request":
        assert request(expiring, device).id != probe.id
    else:
        assert expiring.wait(probe.id, timeout_s=0).status == ProbeStatus.FAILED
    assert probes.get(probe.id).status == ProbeStatus.FAILED
    with pytest.raises(ValueError, match="expire_s"):
        ProbeRepository(probes.db, expire_s=0)


def test_tokens_of_several_tenants_share_the_servers_upload_bound(
    probes: ProbeRepository,
) -> None:
    uploads = UploadRepository(probes.db)
    limits = {"max_count": 10, "max_bytes": 1000, "max_total_bytes": 1500}
    uploads.reserve("default", "ab" * 32, 800, **limits)
    uploads.reserve("globex", "cd" * 32, 700, **limits)
    with pytest.raises(UploadQuotaExceeded, match="upload_total_bytes"):
        uploads.reserve("initech", "ef" * 32, 1, **limits)
    assert uploads.usage("initech").count == 0
    uploads.reserve("default", "ab" * 32, 800, **limits)  # held already: costs nothing
