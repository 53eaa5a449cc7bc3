"""The device registry's contract, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from racing import race

from edgetune.errors import InvalidSpecError, NotFoundError
from edgetune.storage import (
    Device,
    DeviceRepository,
    ProbeRepository,
    ProbeStatus,
    is_online,
    open_database,
    utcnow,
)

HARDWARE = {"cpu": "Intel Xeon", "cores": 2, "memory_bytes": 8 << 30, "accelerator": None,
            "versions": {"onnxruntime": "1.20.0"}}


@pytest.fixture
def devices(database_url: str):
    db = open_database(database_url)
    yield DeviceRepository(db)
    db.dispose()


def register(devices: DeviceRepository, name: str = "pixel", **kw) -> Device:
    return devices.register(name, **{"runtimes": ["onnxruntime"], "hardware": HARDWARE,
                                     "threads": 1, **kw})


def test_register_stores_the_device_and_it_heartbeats_now(devices: DeviceRepository) -> None:
    device = register(devices, runtimes=["onnxruntime", "torch"])
    got = devices.get(device.id)
    assert (got.name, got.tenant, got.threads) == ("pixel", "default", 1)
    assert got.runtimes == ["onnxruntime", "torch"] and got.hardware == HARDWARE
    assert got.created_at.tzinfo is not None and got.last_heartbeat is not None
    assert devices.get_by_name("pixel", tenant="default").id == device.id


def test_registering_a_known_name_reattaches_with_the_new_description(
    devices: DeviceRepository,
) -> None:
    first = register(devices)
    with devices.db.engine.begin() as conn:  # it has been silent for an hour
        conn.execute(sa.update(Device).values(last_heartbeat=utcnow() - timedelta(hours=1)))
    again = register(devices, runtimes=["torchscript"], hardware={"cpu": "Apple M2"}, threads=4)
    assert again.id == first.id and again.created_at == first.created_at
    got = devices.get(first.id)
    assert (got.runtimes, got.hardware, got.threads) == (["torchscript"], {"cpu": "Apple M2"}, 4)
    assert got.last_heartbeat is not None and first.last_heartbeat is not None
    assert got.last_heartbeat > first.last_heartbeat
    assert devices.list()[1] == 1


def test_racing_registrations_of_one_name_all_get_one_device(devices: DeviceRepository) -> None:
    ids = race(lambda i: register(devices, threads=i + 1).id)
    assert len(ids) == 8 and len(set(ids)) == 1
    assert devices.list()[1] == 1


def test_names_are_unique_per_tenant_and_tenants_do_not_see_each_other(
    devices: DeviceRepository,
) -> None:
    ours = register(devices, tenant="acme")
    theirs = register(devices, tenant="globex")
    assert ours.id != theirs.id
    assert devices.get(ours.id, tenant="acme").id == ours.id
    with pytest.raises(NotFoundError):
        devices.get(ours.id, tenant="globex")
    with pytest.raises(NotFoundError):
        devices.get_by_name("pixel", tenant="initech")
    with pytest.raises(NotFoundError):
        devices.delete(ours.id, tenant="globex")
    with pytest.raises(NotFoundError):
        devices.heartbeat(ours.id, tenant="globex")
    rows, count = devices.list(tenant="globex")
    assert count == 1 and [d.id for d in rows] == [theirs.id]
    assert devices.list()[1] == 2


def test_the_unique_name_is_the_databases_rule_too(devices: DeviceRepository) -> None:
    register(devices)
    with pytest.raises(sa.exc.IntegrityError), devices.db.session() as session:
        session.add(Device(id="x", tenant="default", name="pixel", runtimes=[], hardware={},
                           threads=1, created_at=utcnow()))


def test_list_is_by_name_and_paginated(devices: DeviceRepository) -> None:
    for name in ("c", "a", "d", "b"):
        register(devices, name)
    rows, count = devices.list(offset=1, limit=2)
    assert count == 4 and [d.name for d in rows] == ["b", "c"]


def test_heartbeat_and_online_status(devices: DeviceRepository) -> None:
    device = register(devices)
    assert is_online(device, offline_after_s=30)
    later = utcnow() + timedelta(seconds=31)
    assert not is_online(device, offline_after_s=30, now=later)
    beat = devices.heartbeat(device.id, tenant="default")
    assert beat.last_heartbeat is not None and device.last_heartbeat is not None
    assert beat.last_heartbeat >= device.last_heartbeat
    assert is_online(beat, offline_after_s=30, now=beat.last_heartbeat + timedelta(seconds=30))
    never = Device(id="x", tenant="default", name="n", runtimes=[], hardware={}, threads=1,
                   created_at=utcnow(), last_heartbeat=None)
    assert not is_online(never, offline_after_s=30)
    with pytest.raises(ValueError, match="offline_after_s"):
        is_online(device, offline_after_s=0)
    with pytest.raises(NotFoundError):
        devices.heartbeat("nope")


def test_delete_removes_the_device_and_its_probes(devices: DeviceRepository) -> None:
    probes = ProbeRepository(devices.db)
    doomed, kept = register(devices, "doomed"), register(devices, "kept")
    config = {"runtime": "onnxruntime", "input_shape": [1, 8, 8], "batch_size": 1,
              "threads": 1, "warmup": 1, "min_repeats": 5, "min_time_s": 0.0}
    queued = probes.request(doomed.id, artifact_sha256="a" * 64, **config)
    probes.lease(doomed.id, "agent", lease_s=60)
    probes.request(doomed.id, artifact_sha256="b" * 64, **config)
    other = probes.request(kept.id, artifact_sha256="a" * 64, **config)
    devices.delete(doomed.id, tenant="default")
    with pytest.raises(NotFoundError):
        devices.get(doomed.id)
    with pytest.raises(NotFoundError):
        probes.get(queued.id)
    assert probes.list()[1] == 1 and probes.get(other.id).status == ProbeStatus.PENDING
    with pytest.raises(NotFoundError):
        devices.delete(doomed.id)


@pytest.mark.parametrize("name", ["local", "LOCAL", "Local"])
def test_the_builtin_local_device_cannot_be_registered(
    devices: DeviceRepository, name: str
) -> None:
    with pytest.raises(InvalidSpecError, match="built-in device") as raised:
        register(devices, name)
    assert raised.value.field == "name"
    assert devices.list()[1] == 0


@pytest.mark.parametrize(("kw", "field"), [
    ({"name": ""}, "name"),
    ({"name": "has space"}, "name"),
    ({"name": "x" * 129}, "name"),
    ({"name": "trailing\n"}, "name"),
    ({"runtimes": []}, "runtimes"),
    ({"runtimes": "onnxruntime"}, "runtimes"),
    ({"runtimes": ["x" * 33]}, "runtimes"),
    ({"hardware": ["not", "an", "object"]}, "hardware"),
    ({"hardware": {"cores": float("nan")}}, "hardware"),
    ({"hardware": {"blob": "x" * 70_000}}, "hardware"),
    ({"threads": 0}, "threads"),
    ({"threads": True}, "threads"),
])
def test_bad_registrations_are_refused_naming_the_field(
    devices: DeviceRepository, kw: dict, field: str
) -> None:
    with pytest.raises(ValueError) as raised:
        register(devices, **kw)
    assert isinstance(raised.value, InvalidSpecError) and raised.value.field == field
    assert devices.list()[1] == 0
