"""`/probes`: latency measurements on registered devices; ad-hoc ones of an uploaded model,
and the agents' reports."""

from __future__ import annotations

import functools
import hashlib
import os
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool

from edgetune.devices.onnx_checks import check_onnx_model
from edgetune.devices.runtimes import RUNTIMES
from edgetune.errors import InvalidSpecError, NotFoundError
from edgetune.schemas import (
    ErrorPublic,
    ProbeComplete,
    ProbeCreate,
    ProbeFail,
    ProbeLease,
    ProbePublic,
    ProbesPublic,
)
from edgetune.settings import Settings
from edgetune.storage import Database, Device, DeviceRepository, Probe, ProbeRepository
from edgetune.storage.artifacts import UploadQuotaExceeded, UploadRepository, artifact_path
from edgetune.storage.probes import check_input_elements

from ..deps import AgentDep, DatabaseDep, ReaderDep, SettingsDep, UserDep

router = APIRouter(prefix="/probes", tags=["probes"])

#: A probe's id as the server makes them (a UUID); anything else (a NUL byte, a path) is 422
#: before it reaches the database.
ProbeId = Annotated[str, PathParam(max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                                   description="The probe's id.")]

#: The one route whose body may exceed `max_body_bytes` (up to `max_upload_bytes`).
UPLOAD_PATH = "/probes"
#: What an upload may be measured with. A TorchScript file is a program (it may call
#: `torch.from_file`, say, and read or write the agent's files); only the service's own
#: exported artifacts, which a trial queues itself, are measured with torchscript.
UPLOAD_RUNTIMES = ("onnxruntime",)
_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic}}
_MODEL_BODY = {
    "required": True,
    "description": "The model file, as the request body (at most `max_upload_bytes`).",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}


@router.post(
    "", response_model=ProbePublic, status_code=status.HTTP_202_ACCEPTED,
    openapi_extra={"requestBody": _MODEL_BODY},
    responses={200: {"model": ProbePublic, "description": "Answered from the cache."},
               **_ERRORS, 413: {"model": ErrorPublic,
                                "description": "Over `max_upload_bytes`, or over the tenant's "
                                               "upload quota."},
               429: {"model": ErrorPublic,
                     "description": "The tenant has `probe_max_live` probes waiting."},
               422: {"model": ErrorPublic}},
)
async def create_probe(
    params: Annotated[ProbeCreate, Query()],
    request: Request,
    response: Response,
    db: DatabaseDep,
    settings: SettingsDep,
    caller: UserDep,
) -> ProbePublic:
    """Measure the uploaded model (the request body, an ONNX model, measured with
    onnxruntime) on a registered device: 202 with the queued probe, or 200 with a done one
    when the same model was measured the same way before. The model is checked to be ONNX
    (parsed and checked, never run) and stored under its sha256, the name its agent
    downloads it by; it counts against the tenant's upload quota (413 past it) until no probe
    names it. TorchScript uploads are refused: a TorchScript file is a program."""
    if params.runtime not in UPLOAD_RUNTIMES:
        known = params.runtime in RUNTIMES
        raise InvalidSpecError("runtime", f"The value of `runtime` is {params.runtime!r}, but an "
                                          "uploaded model must be measured with one of "
                                          f"{', '.join(map(repr, UPLOAD_RUNTIMES))}"
                                          + (": a TorchScript file is a program, measured only "
                                             "when the service exported it (a trial's model)"
                                             if known else "."))
    check_input_elements(params.input_shape, params.batch_size,
                         settings.probe_max_input_elements)
    device = await run_in_threadpool(find_device, db, params.device, caller.tenant)
    if params.runtime not in device.runtimes:
        raise InvalidSpecError("runtime", f"device {device.name!r} does not offer runtime "
                                          f"{params.runtime!r}; it offers {device.runtimes}")
    probes = ProbeRepository(db, max_input_elements=settings.probe_max_input_elements,
                             expire_s=settings.probe_expire_s)
    # What expired is failed first, so that its upload is collected and frees the quota.
    await run_in_threadpool(functools.partial(probes.expire_overdue, tenant=caller.tenant))
    # The upload quota bounds the models, not the probes: one model asked with ever other
    # configurations would queue without end.
    live = await run_in_threadpool(functools.partial(probes.count_live, tenant=caller.tenant))
    if live >= settings.probe_max_live:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail=(
            f"Tenant {caller.tenant!r} has {live} probes waiting for an agent, the most it may "
            f"(probe_max_live {settings.probe_max_live}); ask again once some are measured."))
    await run_in_threadpool(UploadRepository(db).collect, settings.artifact_dir)
    sha256 = await _store_upload(request, settings, caller.tenant,
                                 RUNTIMES[params.runtime].artifact_format)
    probe = await run_in_threadpool(
        probes.request, device.id, tenant=caller.tenant, artifact_sha256=sha256,
        runtime=params.runtime,
        input_shape=params.input_shape, batch_size=params.batch_size,
        threads=params.threads if params.threads is not None else device.threads,
        warmup=params.warmup if params.warmup is not None else settings.latency_warmup,
        min_repeats=(params.min_repeats if params.min_repeats is not None
                     else settings.latency_min_repeats),
        min_time_s=(params.min_time_s if params.min_time_s is not None
                    else settings.latency_min_time_s),
    )
    if probe.status == "done":
        response.status_code = status.HTTP_200_OK
    return public(probe)


@router.get("", response_model=ProbesPublic, responses=_ERRORS)
def list_probes(
    db: DatabaseDep,
    settings: SettingsDep,
    caller: ReaderDep,
    device: Annotated[str | None, Query(max_length=128, description="Name or id.")] = None,
    status: Annotated[str | None, Query(pattern="^(pending|leased|done|failed)$")] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ProbesPublic:
    """Probes, newest first."""
    device_id = find_device(db, device, caller.tenant).id if device is not None else None
    rows, count = ProbeRepository(db, expire_s=settings.probe_expire_s).list(
        tenant=caller.tenant, device_id=device_id, status=status, offset=offset, limit=limit)
    return ProbesPublic(data=[public(p) for p in rows], count=count)


@router.get("/{probe_id}", response_model=ProbePublic, responses=_ERRORS)
def get_probe(probe_id: ProbeId, db: DatabaseDep, settings: SettingsDep,
              caller: ReaderDep) -> ProbePublic:
    """The probe; one unmeasured for `probe_expire_s` after its request shows failed."""
    return public(ProbeRepository(db, expire_s=settings.probe_expire_s)
                  .get(probe_id, tenant=caller.tenant))


@router.post(
    "/{probe_id}:complete", response_model=ProbePublic,
    responses={**_ERRORS, 409: {"model": ErrorPublic}, 422: {"model": ErrorPublic}},
)
def complete_probe(
    probe_id: ProbeId, body: ProbeComplete, db: DatabaseDep, caller: AgentDep
) -> ProbePublic:
    """The measurement of the agent holding the probe's lease (`agent`, the owner it leased
    it under). Stored once: the holder posting it again changes nothing. 409 for a probe
    this agent does not hold: nobody leased it, or another agent holds or finished it."""
    probe = ProbeRepository(db).complete(probe_id, body.agent, body.result,
                                         tenant=caller.tenant)
    return ProbePublic.model_validate(probe, from_attributes=True)


@router.post(
    "/{probe_id}:fail", response_model=ProbePublic,
    responses={**_ERRORS, 409: {"model": ErrorPublic}, 422: {"model": ErrorPublic}},
)
def fail_probe(probe_id: ProbeId, body: ProbeFail, db: DatabaseDep,
               caller: AgentDep) -> ProbePublic:
    """The agent holding the probe's lease could not measure it; `reason` says why (kept
    printable, at most 500 characters). 409 as for `:complete`."""
    probe = ProbeRepository(db).fail(probe_id, body.agent, body.reason, tenant=caller.tenant)
    return ProbePublic.model_validate(probe, from_attributes=True)


@router.post(
    "/{probe_id}:renew", response_model=ProbePublic,
    responses={**_ERRORS, 409: {"model": ErrorPublic}},
)
def renew_probe(probe_id: ProbeId, body: ProbeLease, db: DatabaseDep, settings: SettingsDep,
                caller: AgentDep) -> ProbePublic:
    """The agent holding the probe's lease still measures it: the lease runs `probe_lease_s`
    from now. Agents renew while they measure, so that a long measurement is not taken over
    while a dead agent's probe goes back to the queue one lease after its last renewal. 409
    as for `:complete`."""
    probe = ProbeRepository(db).renew(probe_id, body.agent, lease_s=settings.probe_lease_s,
                                      tenant=caller.tenant)
    return public(probe)


def public(probe: Probe) -> ProbePublic:
    """The probe as a reader sees it: the owner of a live lease is the lease holder's secret
    (only it may report on the probe), shown once the probe is done or failed."""
    shown = ProbePublic.model_validate(probe, from_attributes=True)
    if probe.status in ("pending", "leased"):
        shown.lease_owner = None
    return shown


def find_device(db: Database, name_or_id: str, tenant: str) -> Device:
    """The device of `tenant` with this id, else the one with this name."""
    devices = DeviceRepository(db)
    try:
        return devices.get(name_or_id, tenant=tenant)
    except NotFoundError:
        return devices.get_by_name(name_or_id, tenant=tenant)


async def _store_upload(request: Request, settings: Settings, tenant: str,
                        format: str) -> str:
    """Stream the body into the artifact directory under its sha256 (never a client's name),
    once it is known to be a model of `format` and counted within the tenant's quota; its
    sha256."""
    directory = settings.artifact_dir
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".upload-{uuid.uuid4().hex}.part"
    digest = hashlib.sha256()
    size = 0
    try:
        with tmp.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_upload_bytes:  # BodySizeLimit answers 413 first
                    raise InvalidSpecError("model", f"The model is over "
                                                    f"{settings.max_upload_bytes:,} bytes.")
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise InvalidSpecError("model", "The request body must be the model file; it is "
                                            "empty.")
        sha256 = digest.hexdigest()
        await run_in_threadpool(_check_model, tmp, format)
        try:
            await run_in_threadpool(
                UploadRepository(request.app.state.db).reserve, tenant, sha256, size,
                max_count=settings.upload_quota_count, max_bytes=settings.upload_quota_bytes,
                max_total_bytes=settings.upload_total_bytes)
        except UploadQuotaExceeded as e:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=str(e)) from e
        os.replace(tmp, artifact_path(directory, sha256, format))
        return sha256
    finally:
        tmp.unlink(missing_ok=True)


def _check_model(path: Path, format: str) -> None:
    """Raise `InvalidSpecError` naming `model` unless the file is a well-formed,
    self-contained ONNX model of standard operators (`check_onnx_model`). It is parsed and
    checked, never run."""
    if format != "onnx":  # only ONNX is uploaded (UPLOAD_RUNTIMES)
        raise InvalidSpecError("model", f"An uploaded model must be ONNX, not {format}.")
    check_onnx_model(path.read_bytes())  # at most max_upload_bytes, streamed to disk first
