"""`/devices`: the registry of machines whose agents measure latency, and the agents' queue."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from fastapi.concurrency import run_in_threadpool

from edgetune.schemas import (
    DeviceCreate,
    DevicePublic,
    DevicesPublic,
    ErrorPublic,
    ProbeLease,
    ProbePublic,
)
from edgetune.settings import Settings
from edgetune.storage import Device, DeviceRepository, ProbeRepository, is_online

from ..deps import DatabaseDep, SettingsDep

router = APIRouter(prefix="/devices", tags=["devices"])

_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic}}
#: The longest a lease request waits for a probe; agents ask again.
MAX_LEASE_WAIT_S = 30.0
#: How often a waiting lease request looks at the queue.
LEASE_POLL_S = 0.2


@router.post(
    "", response_model=DevicePublic, status_code=status.HTTP_201_CREATED,
    responses={200: {"model": DevicePublic, "description": "Re-attached to the device of "
                     "that name."}, 422: {"model": ErrorPublic}},
)
def register_device(
    body: DeviceCreate, response: Response, db: DatabaseDep, settings: SettingsDep
) -> DevicePublic:
    """Register a device, or re-attach to the one of that name (its id, its probes): 201 when
    created, 200 when re-attached. Either way it heartbeats now."""
    device = DeviceRepository(db).register(
        body.name, runtimes=body.runtimes, hardware=body.hardware, threads=body.threads
    )
    # `register` stamps a new device's creation and heartbeat with one instant.
    if device.last_heartbeat != device.created_at:
        response.status_code = status.HTTP_200_OK
    return device_public(device, settings)


@router.get("", response_model=DevicesPublic)
def list_devices(
    db: DatabaseDep,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DevicesPublic:
    """Devices by name."""
    rows, count = DeviceRepository(db).list(offset=offset, limit=limit)
    return DevicesPublic(data=[device_public(d, settings) for d in rows], count=count)


@router.get("/{device_id}", response_model=DevicePublic, responses=_ERRORS)
def get_device(device_id: str, db: DatabaseDep, settings: SettingsDep) -> DevicePublic:
    return device_public(DeviceRepository(db).get(device_id), settings)


@router.delete("/{device_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
def delete_device(device_id: str, db: DatabaseDep) -> Response:
    """Forget the device and every probe of it."""
    DeviceRepository(db).delete(device_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{device_id}/heartbeat", response_model=DevicePublic, responses=_ERRORS)
def heartbeat(device_id: str, db: DatabaseDep, settings: SettingsDep) -> DevicePublic:
    """The device's agent is alive."""
    return device_public(DeviceRepository(db).heartbeat(device_id), settings)


@router.post(
    "/{device_id}/probes:lease", response_model=ProbePublic,
    responses={**_ERRORS, 204: {"description": "No probe came within `wait_s`."},
               422: {"model": ErrorPublic}},
)
async def lease_probe(
    device_id: str,
    body: ProbeLease,
    db: DatabaseDep,
    settings: SettingsDep,
    wait_s: Annotated[float, Query(ge=0, le=MAX_LEASE_WAIT_S,
                                   description="Wait this long for a probe.")] = 0,
) -> Any:
    """Lease the device's oldest probe to `agent` for `probe_lease_s` seconds: 200 with it,
    or 204 when none came within `wait_s`. Of agents racing for a probe, one gets it."""
    devices = DeviceRepository(db)
    probes = ProbeRepository(db)
    await run_in_threadpool(devices.get, device_id)  # 404 for an unknown device, at once
    deadline = time.monotonic() + wait_s
    while True:
        probe = await run_in_threadpool(
            probes.lease, device_id, body.agent, lease_s=settings.probe_lease_s
        )
        if probe is not None:
            return ProbePublic.model_validate(probe, from_attributes=True)
        left = deadline - time.monotonic()
        if left <= 0:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        await asyncio.sleep(min(LEASE_POLL_S, left))


def device_public(device: Device, settings: Settings) -> DevicePublic:
    online = is_online(device, offline_after_s=settings.device_offline_after_s)
    return DevicePublic(
        id=device.id, name=device.name, runtimes=list(device.runtimes),
        hardware=dict(device.hardware), threads=device.threads,
        status="online" if online else "offline", last_heartbeat=device.last_heartbeat,
        created_at=device.created_at,
    )
