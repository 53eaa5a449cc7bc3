"""`/artifacts`: download an exported model by its sha256, the name it is stored under."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response

from edgetune.errors import NotFoundError
from edgetune.schemas import ErrorPublic
from edgetune.storage import ProbeRepository
from edgetune.storage.artifacts import SHA256, find_artifact

from ..deps import DatabaseDep, ReaderDep, SettingsDep

router = APIRouter(prefix="/artifacts", tags=["artifacts"])

Sha256 = Annotated[
    str,
    PathParam(pattern=f"^{SHA256.pattern}$",
              description="The artifact's sha256, as 64 lowercase hex digits."),
]
# Neither ONNX nor TorchScript has a registered media type; octet-stream makes clients save
# the bytes as they are.
MEDIA_TYPE = "application/octet-stream"
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {MEDIA_TYPE: {}},
          "description": "The file; its ETag is the quoted sha256."},
    304: {"description": "The client's copy (If-None-Match) is this artifact."},
    404: {"model": ErrorPublic},
    422: {"model": ErrorPublic},
}


@router.get("/{sha256}", response_class=FileResponse, responses=_RESPONSES)
def get_artifact(
    sha256: Sha256,
    settings: SettingsDep,
    db: DatabaseDep,
    caller: ReaderDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The exported model (ONNX or TorchScript) whose content has this sha256, when a probe of
    the caller's tenant measures it (a trial's model is also at its job's trial route)."""
    path = find_artifact(settings.artifact_dir, sha256)
    # Another tenant's artifact answers as an absent one does.
    if path is None or not ProbeRepository(db).measures_artifact(sha256, tenant=caller.tenant):
        raise NotFoundError(f"no artifact has the sha256 {sha256}")
    etag = f'"{sha256}"'
    headers = {
        "ETag": etag,
        "X-Artifact-Sha256": sha256,
        # The bytes behind a hash never change: a cached copy stays right while it exists.
        "Cache-Control": "max-age=31536000, immutable",
    }
    if if_none_match is not None and _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=MEDIA_TYPE, filename=path.name, headers=headers)


def _matches(if_none_match: str, etag: str) -> bool:
    # RFC 9110 13.1.2: a list of entity tags, compared weakly, or "*".
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags
