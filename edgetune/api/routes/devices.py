"""`/devices`: the registry of machines whose agents measure latency, and the agents' queue."""

from __future__ import annotations

import asyncio
import functools
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from edgetune.devices.predictor import PredictorCache
from edgetune.errors import ConflictError
from edgetune.schemas import (
    DeviceCreate,
    DevicePublic,
    DevicesPublic,
    ErrorPublic,
    PredictorPublic,
    ProbeLease,
    ProbePublic,
)
from edgetune.search.device_latency import (
    LatencyUnavailable,
    fit_device_predictor,
)
from edgetune.settings import Settings
from edgetune.storage import Database, Device, DeviceRepository, ProbeRepository, is_online
from edgetune.storage.artifacts import UploadRepository

from ..deps import AgentDep, DatabaseDep, ReaderDep, SettingsDep, UserDep

router = APIRouter(prefix="/devices", tags=["devices"])

_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic}}
#: The longest a lease request waits for a probe; agents ask again.
MAX_LEASE_WAIT_S = 30.0
#: How often a waiting lease request looks at the queue: an indexed read that writes nothing
#: when the queue is empty, and what a probe waits at most, on average half, beyond its
#: measurement (probes are queued by workers in other processes: no in-process wake-up).
LEASE_POLL_S = 0.05


@router.post(
    "", response_model=DevicePublic, status_code=status.HTTP_201_CREATED,
    responses={200: {"model": DevicePublic, "description": "Re-attached to the device of "
                     "that name."}, 422: {"model": ErrorPublic}},
)
def register_device(
    body: DeviceCreate, response: Response, db: DatabaseDep, settings: SettingsDep,
    caller: AgentDep,
) -> DevicePublic:
    """Register a device, or re-attach to the one of that name (its id, its probes): 201 when
    created, 200 when re-attached. Either way it heartbeats now."""
    device = DeviceRepository(db).register(
        body.name, runtimes=body.runtimes, hardware=body.hardware, threads=body.threads,
        tenant=caller.tenant,
    )
    # `register` stamps a new device's creation and heartbeat with one instant.
    if device.last_heartbeat != device.created_at:
        response.status_code = status.HTTP_200_OK
    return device_public(device, settings)


@router.get("", response_model=DevicesPublic)
def list_devices(
    db: DatabaseDep,
    settings: SettingsDep,
    caller: ReaderDep,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DevicesPublic:
    """Devices by name."""
    rows, count = DeviceRepository(db).list(tenant=caller.tenant, offset=offset, limit=limit)
    return DevicesPublic(data=[device_public(d, settings) for d in rows], count=count)


@router.get("/{device_id}", response_model=DevicePublic, responses=_ERRORS)
def get_device(
    device_id: str, db: DatabaseDep, settings: SettingsDep, caller: ReaderDep
) -> DevicePublic:
    return device_public(DeviceRepository(db).get(device_id, tenant=caller.tenant), settings)


@router.delete("/{device_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
def delete_device(device_id: str, db: DatabaseDep, settings: SettingsDep,
                  caller: UserDep) -> Response:
    """Forget the device and every probe of it; uploaded models no probe names any more are
    deleted (and leave the tenant's upload quota)."""
    DeviceRepository(db).delete(device_id, tenant=caller.tenant)
    UploadRepository(db).collect(settings.artifact_dir, grace_s=0)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{device_id}/heartbeat", response_model=DevicePublic, responses=_ERRORS)
def heartbeat(
    device_id: str, db: DatabaseDep, settings: SettingsDep, caller: AgentDep
) -> DevicePublic:
    """The device's agent is alive."""
    return device_public(DeviceRepository(db).heartbeat(device_id, tenant=caller.tenant),
                         settings)


@router.post(
    "/{device_id}/probes:lease", response_model=ProbePublic,
    responses={**_ERRORS, 204: {"description": "No probe came within `wait_s`."},
               422: {"model": ErrorPublic}},
)
async def lease_probe(
    device_id: str,
    body: ProbeLease,
    request: Request,
    db: DatabaseDep,
    settings: SettingsDep,
    caller: AgentDep,
    wait_s: Annotated[float, Query(ge=0, le=MAX_LEASE_WAIT_S,
                                   description="Wait this long for a probe.")] = 0,
) -> Any:
    """Lease the device's oldest probe to `agent` for `probe_lease_s` seconds (renewed by
    `/probes/{id}:renew` while the agent measures): 200 with it, or 204 when none came within
    `wait_s`. Of agents racing for a probe, one gets it."""
    devices = DeviceRepository(db)
    probes = ProbeRepository(db, expire_s=settings.probe_expire_s)
    # 404 for an unknown device (or another tenant's), at once
    await run_in_threadpool(functools.partial(devices.get, device_id, tenant=caller.tenant))
    deadline = time.monotonic() + wait_s
    while True:
        if await request.is_disconnected():
            # An agent gone mid-poll (killed, stopped) must not be handed a probe it would
            # never measure: the probe would wait out the whole lease.
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        probe = await run_in_threadpool(
            probes.lease, device_id, body.agent, lease_s=settings.probe_lease_s
        )
        if probe is not None:
            return ProbePublic.model_validate(probe, from_attributes=True)
        left = deadline - time.monotonic()
        if left <= 0:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        await asyncio.sleep(min(LEASE_POLL_S, left))


@router.get(
    "/{device_id}/predictor", response_model=PredictorPublic,
    responses={**_ERRORS, 409: {"model": ErrorPublic,
                                "description": "Too few measured probes to fit one."},
               503: {"model": ErrorPublic, "description": "The fit takes longer than "
                     "`predictor_timeout_s`; it goes on: retry after Retry-After."}},
)
async def get_predictor(
    device_id: str, request: Request, db: DatabaseDep, settings: SettingsDep,
    caller: ReaderDep,
) -> Any:
    """The device's latency predictor, fitted on its done probes (the newest
    `PREDICTOR_HISTORY` whose ONNX artifact is still stored, of at most
    `predictor_max_graph_bytes` each), with its cross-validated error: how far to trust
    `mode: predicted` on this device. 409 while it has fewer than `MIN_PROBES` usable probes.
    Refitted only when the device has a new done probe. Fits run one at a time, off the
    request threads, and read graphs in a child process (`predictor_graph_timeout_s` each);
    a fit that takes over `predictor_timeout_s` answers 503 and goes on, so that a later
    request finds it done."""
    device = await run_in_threadpool(
        functools.partial(DeviceRepository(db).get, device_id, tenant=caller.tenant))
    _, n_done = await run_in_threadpool(
        functools.partial(ProbeRepository(db).list, device_id=device.id, status="done", limit=1))
    cache: PredictorCache = request.app.state.predictors
    cached = cache.fitted(device.id, n_done)
    if cached is not None:
        return cached
    key = (id(cache), device.id, n_done)
    fit = _FITS_IN_FLIGHT.get(key)
    if fit is None:
        fit = asyncio.get_running_loop().run_in_executor(
            _fitter(), _fit_and_store, db, settings, cache, device, n_done)
        _FITS_IN_FLIGHT[key] = fit
        fit.add_done_callback(lambda _f: _FITS_IN_FLIGHT.pop(key, None))
    try:
        return await asyncio.wait_for(asyncio.shield(fit), settings.predictor_timeout_s)
    except TimeoutError:
        retry_after = max(1, math.ceil(settings.predictor_timeout_s))
        return JSONResponse(status_code=503, headers={"Retry-After": str(retry_after)}, content={
            "detail": f"fitting the latency predictor of device {device.name!r} takes over "
                      f"{settings.predictor_timeout_s:g} s (EDGETUNE_PREDICTOR_TIMEOUT_S); it "
                      "goes on: retry later"})
    except LatencyUnavailable as e:
        raise ConflictError(str(e)) from e


#: Fits in progress, by (app, device, done probes): a request for one already running waits on it.
_FITS_IN_FLIGHT: dict[tuple[int, str, int], asyncio.Future[PredictorPublic]] = {}
_FITTER: list[ThreadPoolExecutor] = []


def _fitter() -> ThreadPoolExecutor:
    """One thread for every fit of this process: fits queue behind each other rather than take
    the request threads (a fit reads ONNX graphs, seconds of work)."""
    if not _FITTER:
        _FITTER.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="predictor-fit"))
    return _FITTER[0]


def _fit_and_store(
    db: Database, settings: Settings, cache: PredictorCache, device: Device, n_done: int
) -> PredictorPublic:
    fitted = fit_device_predictor(db, settings.artifact_dir, device, features=cache.features)
    error = fitted.error
    answer = PredictorPublic(
        device_id=device.id, kind=fitted.predictor.kind, n_probes=fitted.n_probes,
        n_skipped=fitted.n_skipped, features=fitted.predictor.feature_names,
        folds=int(error["folds"] or 0), mape=float(error["mape"] or 0.0),
        within_10pct=float(error["within_10pct"] or 0.0),
        spearman=None if error["spearman"] is None else float(error["spearman"]),
    )
    cache.store(device.id, n_done, answer)
    return answer


def device_public(device: Device, settings: Settings) -> DevicePublic:
    online = is_online(device, offline_after_s=settings.device_offline_after_s)
    return DevicePublic(
        id=device.id, name=device.name, runtimes=list(device.runtimes),
        hardware=dict(device.hardware), threads=device.threads,
        status="online" if online else "offline", last_heartbeat=device.last_heartbeat,
        created_at=device.created_at,
    )
