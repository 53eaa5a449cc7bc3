"""`/probes`: latency measurements on registered devices; ad-hoc ones of an uploaded model,
and the agents' reports."""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from edgetune.devices.runtimes import RUNTIMES
from edgetune.errors import InvalidSpecError, NotFoundError
from edgetune.schemas import (
    ErrorPublic,
    ProbeComplete,
    ProbeCreate,
    ProbeFail,
    ProbePublic,
    ProbesPublic,
)
from edgetune.settings import Settings
from edgetune.storage import Database, Device, DeviceRepository, ProbeRepository
from edgetune.storage.artifacts import artifact_path

from ..deps import AgentDep, DatabaseDep, ReaderDep, SettingsDep, UserDep

router = APIRouter(prefix="/probes", tags=["probes"])

#: The one route whose body may exceed `max_body_bytes` (up to `max_upload_bytes`).
UPLOAD_PATH = "/probes"
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
               **_ERRORS, 413: {"model": ErrorPublic}, 422: {"model": ErrorPublic}},
)
async def create_probe(
    params: Annotated[ProbeCreate, Query()],
    request: Request,
    response: Response,
    db: DatabaseDep,
    settings: SettingsDep,
    caller: UserDep,
) -> ProbePublic:
    """Measure the uploaded model (the request body; ONNX for onnxruntime, TorchScript for
    torchscript) on a registered device: 202 with the queued probe, or 200 with a done one
    when the same model was measured the same way before. The model is stored under its
    sha256, the name its agent downloads it by."""
    device = await run_in_threadpool(find_device, db, params.device, caller.tenant)
    if params.runtime not in RUNTIMES:
        raise InvalidSpecError("runtime", f"The value of `runtime` is {params.runtime!r}, but "
                                          f"must be one of {', '.join(map(repr, RUNTIMES))}.")
    if params.runtime not in device.runtimes:
        raise InvalidSpecError("runtime", f"device {device.name!r} does not offer runtime "
                                          f"{params.runtime!r}; it offers {device.runtimes}")
    sha256 = await _store_upload(request, settings, RUNTIMES[params.runtime].artifact_format)
    probe = await run_in_threadpool(
        ProbeRepository(db).request, device.id, tenant=caller.tenant, artifact_sha256=sha256,
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
    return ProbePublic.model_validate(probe, from_attributes=True)


@router.get("", response_model=ProbesPublic, responses=_ERRORS)
def list_probes(
    db: DatabaseDep,
    caller: ReaderDep,
    device: Annotated[str | None, Query(max_length=128, description="Name or id.")] = None,
    status: Annotated[str | None, Query(pattern="^(pending|leased|done|failed)$")] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ProbesPublic:
    """Probes, newest first."""
    device_id = find_device(db, device, caller.tenant).id if device is not None else None
    rows, count = ProbeRepository(db).list(tenant=caller.tenant, device_id=device_id,
                                           status=status, offset=offset, limit=limit)
    return ProbesPublic(data=[ProbePublic.model_validate(p, from_attributes=True) for p in rows],
                        count=count)


@router.get("/{probe_id}", response_model=ProbePublic, responses=_ERRORS)
def get_probe(probe_id: str, db: DatabaseDep, caller: ReaderDep) -> ProbePublic:
    return ProbePublic.model_validate(ProbeRepository(db).get(probe_id, tenant=caller.tenant),
                                      from_attributes=True)


@router.post(
    "/{probe_id}:complete", response_model=ProbePublic,
    responses={**_ERRORS, 409: {"model": ErrorPublic}, 422: {"model": ErrorPublic}},
)
def complete_probe(
    probe_id: str, body: ProbeComplete, db: DatabaseDep, caller: AgentDep
) -> ProbePublic:
    """An agent's measurement of a probe it leased. Stored once: posting it again, or after
    the probe finished otherwise, changes nothing. 409 for a probe nobody leased."""
    probe = ProbeRepository(db).complete(probe_id, body.agent, body.result,
                                         tenant=caller.tenant)
    return ProbePublic.model_validate(probe, from_attributes=True)


@router.post(
    "/{probe_id}:fail", response_model=ProbePublic,
    responses={**_ERRORS, 409: {"model": ErrorPublic}, 422: {"model": ErrorPublic}},
)
def fail_probe(probe_id: str, body: ProbeFail, db: DatabaseDep, caller: AgentDep) -> ProbePublic:
    """The agent holding the probe's lease could not measure it; `reason` says why. A final
    probe, or one another agent leased since, does not change."""
    probe = ProbeRepository(db).fail(probe_id, body.agent, body.reason, tenant=caller.tenant)
    return ProbePublic.model_validate(probe, from_attributes=True)


def find_device(db: Database, name_or_id: str, tenant: str) -> Device:
    """The device of `tenant` with this id, else the one with this name."""
    devices = DeviceRepository(db)
    try:
        return devices.get(name_or_id, tenant=tenant)
    except NotFoundError:
        return devices.get_by_name(name_or_id, tenant=tenant)


async def _store_upload(request: Request, settings: Settings, format: str) -> str:
    """Stream the body into the artifact directory under its sha256; never a client's name."""
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
        os.replace(tmp, artifact_path(directory, sha256, format))
        return sha256
    finally:
        tmp.unlink(missing_ok=True)
