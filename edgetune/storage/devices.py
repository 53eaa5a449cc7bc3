"""The device registry: the machines whose agents measure latency, and their heartbeats."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from edgetune.errors import InvalidSpecError, NotFoundError, StorageError
from edgetune.spec import LOCAL_DEVICE, NAME
from edgetune.storage.jobs import DEFAULT_TENANT, Repository, utcnow
from edgetune.storage.models import Device, Probe

#: A runtime's name, as a probe stores it (`edgetune_probes.runtime` is 32 characters).
RUNTIME_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}$"
#: The hardware description is the agent's to fill; this bounds a row's size, not its content.
MAX_HARDWARE_BYTES = 64 * 1024
MAX_RUNTIMES = 16
#: Attempts at inserting a device that racing registrations of the same name keep taking first.
_INSERT_TRIES = 5


def is_online(device: Device, *, offline_after_s: float, now: datetime | None = None) -> bool:
    """Whether `device` heartbeat within the last `offline_after_s` seconds (of `now`)."""
    if not offline_after_s > 0:
        raise ValueError(f"The value of `offline_after_s` is {offline_after_s}, but must be > 0.")
    if device.last_heartbeat is None:
        return False
    now = now if now is not None else utcnow()
    return now - device.last_heartbeat <= timedelta(seconds=offline_after_s)


class DeviceRepository(Repository):
    """Every read and write of `edgetune_devices`. Driver errors surface as `StorageError`.

    A device is named uniquely within its tenant, and an agent registering under a name that
    exists takes that device over: a restarted agent keeps its device, its id and its probes.
    """

    def register(
        self,
        name: str,
        *,
        runtimes: Sequence[str],
        hardware: dict[str, Any],
        threads: int,
        tenant: str = DEFAULT_TENANT,
    ) -> Device:
        """Create the device `name`, or re-attach to it: its runtimes, hardware and threads
        become the ones given, and it heartbeats now. Racing registrations of one name all get
        the one device (the unique name decides which insert wins; the others re-attach)."""
        _check_name(name)
        runtimes = _checked_runtimes(runtimes)
        _check_hardware(hardware)
        check_int("threads", threads, 1)
        for _ in range(_INSERT_TRIES):
            now = utcnow()
            with self._session() as session:
                device = session.scalar(
                    select(Device).where(Device.tenant == tenant, Device.name == name)
                )
                if device is not None:
                    device.runtimes = runtimes
                    device.hardware = hardware
                    device.threads = threads
                    device.last_heartbeat = now
                    return device
            device = Device(id=str(uuid.uuid4()), tenant=tenant, name=name, runtimes=runtimes,
                            hardware=hardware, threads=threads, created_at=now,
                            last_heartbeat=now)
            if self._insert_unless_taken(device):
                return device
        raise StorageError(f"could not register device {name!r}: racing registrations of that "
                           f"name kept winning for {_INSERT_TRIES} tries; try again")

    def get(self, device_id: str, *, tenant: str | None = None) -> Device:
        with self._session() as session:
            device = session.get(Device, device_id)
            if device is None or (tenant is not None and device.tenant != tenant):
                raise NotFoundError(f"device {device_id!r} not found")
            return device

    def get_by_name(self, name: str, *, tenant: str) -> Device:
        with self._session() as session:
            device = session.scalar(
                select(Device).where(Device.tenant == tenant, Device.name == name)
            )
            if device is None:
                raise NotFoundError(f"device {name!r} not found")
            return device

    def list(
        self, *, tenant: str | None = None, offset: int = 0, limit: int = 50
    ) -> tuple[Sequence[Device], int]:
        """Devices by name, and how many there are in all."""
        query = select(Device)
        if tenant is not None:
            query = query.where(Device.tenant == tenant)
        return self._page(query.order_by(Device.name, Device.tenant, Device.id), offset, limit)

    def delete(self, device_id: str, *, tenant: str | None = None) -> None:
        """Delete the device and every probe of it."""
        device = self.get(device_id, tenant=tenant)
        with self._session() as session:
            # PostgreSQL cascades by the foreign key; SQLite enforces foreign keys only when
            # asked to per connection, so the probes go explicitly, in the same transaction.
            session.execute(delete(Probe).where(Probe.device_id == device.id))
            session.execute(delete(Device).where(Device.id == device.id))

    def heartbeat(self, device_id: str, *, tenant: str | None = None) -> Device:
        """Record that the device's agent is alive now."""
        query = update(Device).where(Device.id == device_id)
        if tenant is not None:
            query = query.where(Device.tenant == tenant)
        with self._session() as session:
            result = session.execute(
                query.values(last_heartbeat=utcnow()).execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise NotFoundError(f"device {device_id!r} not found")
            device = session.get(Device, device_id, populate_existing=True)
            assert device is not None  # updated a moment ago, in this transaction
            return device


def check_int(field: str, value: int, low: int) -> None:
    """Refuse `value` unless it is an integer (not a bool) >= `low`, naming `field`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidSpecError(field, f"The value of `{field}` is {value!r}, but must be an "
                                      f"integer >= {low}.")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(NAME, name):
        raise InvalidSpecError("name", f"The device name {name!r} must be 1-128 letters, digits, "
                                       "'_', '.' or '-', starting with a letter or digit.")
    if name.lower() == LOCAL_DEVICE:
        raise InvalidSpecError("name", f"{name!r} names the built-in device that measures on the "
                                       "worker itself; register the agent under another name.")


def _checked_runtimes(runtimes: Sequence[str]) -> list[str]:
    if isinstance(runtimes, str) or not runtimes or len(runtimes) > MAX_RUNTIMES:
        raise InvalidSpecError("runtimes", f"The value of `runtimes` is {runtimes!r}, but must be "
                                           f"a list of 1-{MAX_RUNTIMES} runtime names.")
    for runtime in runtimes:
        if not isinstance(runtime, str) or not re.fullmatch(RUNTIME_NAME, runtime):
            raise InvalidSpecError("runtimes", f"The runtime name {runtime!r} must be 1-32 "
                                               "letters, digits, '_', '.' or '-'.")
    return list(dict.fromkeys(runtimes))  # each once, in the agent's order of preference


def _check_hardware(hardware: dict[str, Any]) -> None:
    if not isinstance(hardware, dict):
        raise InvalidSpecError("hardware", f"The value of `hardware` is {hardware!r}, but must "
                                           "be a JSON object.")
    try:
        size = len(json.dumps(hardware, allow_nan=False).encode())
    except (TypeError, ValueError) as e:
        raise InvalidSpecError("hardware", f"The hardware description is not JSON: {e}") from e
    if size > MAX_HARDWARE_BYTES:
        raise InvalidSpecError("hardware", f"The hardware description is {size:,} bytes of "
                                           f"JSON, but must be at most {MAX_HARDWARE_BYTES:,}.")
