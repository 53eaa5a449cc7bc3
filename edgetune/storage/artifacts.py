"""Where content-addressed artifacts live (`artifact_dir/<sha256>.<ext>`, never a user path), and
the record of uploaded ones: the per-tenant upload quota and the collector of unused uploads."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, and_, delete, exists, false, func, or_, select, text, update
from sqlalchemy.orm import Session

from edgetune.errors import StorageError
from edgetune.storage.jobs import Repository, utcnow
from edgetune.storage.models import Probe, ProbeStatus, Upload
from edgetune.storage.study_store import artifact_named_by_a_trial

logger = logging.getLogger(__name__)

#: Artifact format -> file extension.
ARTIFACT_FORMATS: dict[str, str] = {"onnx": "onnx", "torchscript": "pt"}
SHA256 = re.compile(r"[0-9a-f]{64}")


def artifact_path(artifact_dir: Path, sha256: str, format: str) -> Path:
    """The file of the artifact with this hash and format; ValueError for anything else."""
    if not SHA256.fullmatch(sha256):
        raise ValueError(f"{sha256!r} is not a sha256 hex digest")
    if format not in ARTIFACT_FORMATS:
        raise ValueError(
            f"The value of `format` is {format!r}, but must be one of "
            f"{', '.join(repr(f) for f in ARTIFACT_FORMATS)}."
        )
    return artifact_dir / f"{sha256}.{ARTIFACT_FORMATS[format]}"


def find_artifact(artifact_dir: Path, sha256: str) -> Path | None:
    """The stored file of the artifact with this hash, in whichever format it was exported."""
    for format in ARTIFACT_FORMATS:
        path = artifact_path(artifact_dir, sha256, format)
        if path.is_file():
            return path
    return None


@dataclass(frozen=True)
class UploadUsage:
    """What a tenant's uploaded models hold: how many, and their bytes."""

    count: int
    size_bytes: int


class UploadQuotaExceeded(ValueError):
    """An upload would take its tenant past `max_count` models or `max_bytes` bytes; the
    message says which bound, what the tenant holds, and how to free some."""


class UploadRepository(Repository):
    """The tenant-scoped record of uploaded probe models (`edgetune_uploads`): the quota counts
    them, and `collect` deletes the files of those no probe names any more.

    Only uploads are ever collected: a trial's exported artifact has no row here, and even a
    file that is both (the same bytes uploaded and exported) is kept while a trial's
    attributes name it.
    """

    def usage(self, tenant: str) -> UploadUsage:
        with self._session() as session:
            count, size = session.execute(
                select(func.count(), func.coalesce(func.sum(Upload.size_bytes), 0))
                .where(Upload.tenant == tenant)
            ).one()
        return UploadUsage(int(count), int(size))

    def reserve(self, tenant: str, sha256: str, size_bytes: int, *, max_count: int,
                max_bytes: int, max_total_bytes: int | None = None) -> None:
        """Count this upload against `tenant`, or raise `UploadQuotaExceeded` when it would
        take the tenant past its quota, or all tenants together past `max_total_bytes` (tokens
        of several tenants do not multiply the disk they may fill); an upload the tenant
        already holds costs nothing more.

        The check and the count are one transaction that holds a lock (the tenant's, or all
        uploads' with `max_total_bytes`; on SQLite the database's write lock), so that uploads
        racing each other cannot all pass a check made before any of them was counted.
        Reserve before queueing the probe that names it: the collector lets an unnamed upload
        be for `grace_s` after it was reserved.
        """
        with self._session() as session:
            self._lock(session, tenant if max_total_bytes is None else None)
            held = session.get(Upload, (tenant, sha256))
            if held is not None:
                held.created_at = utcnow()  # named again: not collected while its probe comes
                return
            count, size = session.execute(
                select(func.count(), func.coalesce(func.sum(Upload.size_bytes), 0))
                .where(Upload.tenant == tenant)
            ).one()
            if count + 1 > max_count:
                raise UploadQuotaExceeded(
                    f"Tenant {tenant!r} holds {count} uploaded models, the most it may "
                    f"(upload_quota_count {max_count}); models whose probes failed are "
                    "collected, and deleting the devices whose probes you no longer need "
                    "frees theirs.")
            if size + size_bytes > max_bytes:
                raise UploadQuotaExceeded(
                    f"Tenant {tenant!r} holds {size:,} bytes of uploaded models; this one of "
                    f"{size_bytes:,} bytes would pass its quota of {max_bytes:,} bytes "
                    "(upload_quota_bytes); models whose probes failed are collected, and "
                    "deleting the devices whose probes you no longer need frees theirs.")
            if max_total_bytes is not None:
                total = int(session.scalar(select(func.coalesce(func.sum(Upload.size_bytes),
                                                                0))) or 0)
                if total + size_bytes > max_total_bytes:
                    raise UploadQuotaExceeded(
                        f"The server holds {total:,} bytes of uploaded models; this one of "
                        f"{size_bytes:,} bytes would pass the bound for all tenants together, "
                        f"{max_total_bytes:,} bytes (upload_total_bytes); try again once "
                        "models whose probes finished are collected.")
            session.add(Upload(tenant=tenant, artifact_sha256=sha256, size_bytes=size_bytes,
                               created_at=utcnow()))

    @staticmethod
    def _lock(session: Session, tenant: str | None) -> None:
        # tenant None: every tenant's uploads.
        if session.get_bind().dialect.name == "postgresql":
            name = "edgetune-uploads" if tenant is None else f"edgetune-uploads:{tenant}"
            key = int.from_bytes(hashlib.sha256(name.encode())
                                 .digest()[:8], "big", signed=True)
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        else:
            # A write that changes nothing takes SQLite's write lock for the transaction.
            session.execute(update(Upload).where(false()).values(size_bytes=0)
                            .execution_options(synchronize_session=False))

    def collect(self, artifact_dir: Path, *, grace_s: float = 60.0) -> list[str]:
        """Forget the uploads no probe of their tenant names but failed ones (their devices were
        deleted, or their probes failed or expired: a failed probe answers nothing, asking
        again uploads again), so that they no longer count against the quota, and delete their
        files unless a trial's attributes name them or another upload holds them. Returns the
        sha256 of each file deleted.

        An upload in flight is counted before its probe exists: one reserved in the last
        `grace_s` seconds is kept unless a probe naming it failed since. A file written in the
        last `grace_s` seconds is kept with its record, and looked at again next time: a
        trial may be storing the same bytes.
        """
        failed_since = exists().where(Probe.artifact_sha256 == Upload.artifact_sha256,
                                      Probe.tenant == Upload.tenant,
                                      Probe.status == ProbeStatus.FAILED.value,
                                      Probe.finished_at >= Upload.created_at)
        unreferenced = and_(
            ~exists().where(Probe.artifact_sha256 == Upload.artifact_sha256,
                            Probe.tenant == Upload.tenant,
                            Probe.status != ProbeStatus.FAILED.value),
            or_(Upload.created_at < utcnow() - timedelta(seconds=grace_s), failed_since),
        )
        with self._session() as session:
            orphans = sorted(set(session.scalars(
                select(Upload.artifact_sha256).where(unreferenced)).all()))
        deleted = []
        fresh_after = time.time() - grace_s
        for sha256 in orphans:
            paths = [artifact_path(artifact_dir, sha256, format) for format in ARTIFACT_FORMATS]
            kept = self._named_by_a_trial(sha256) or self._held(sha256, unreferenced)
            if not kept and any(_modified_after(path, fresh_after) for path in paths):
                continue
            with self._session() as session:
                session.execute(delete(Upload).where(Upload.artifact_sha256 == sha256,
                                                     unreferenced)
                                .execution_options(synchronize_session=False))
            if kept or self._uploaded(sha256):
                continue
            for path in paths:
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                deleted.append(sha256)
                logger.info("collected uploaded artifact %s: no probe names it", sha256[:12])
        return deleted

    def _held(self, sha256: str, unreferenced: ColumnElement[bool]) -> bool:
        # Another upload of the same bytes that a probe still names (another tenant's, say).
        with self._session() as session:
            return session.scalar(select(Upload.artifact_sha256).where(
                Upload.artifact_sha256 == sha256, ~unreferenced).limit(1)) is not None

    def _uploaded(self, sha256: str) -> bool:
        # Uploaded again since the rows above were read.
        with self._session() as session:
            return session.scalar(select(Upload.artifact_sha256)
                                  .where(Upload.artifact_sha256 == sha256).limit(1)) is not None

    def _named_by_a_trial(self, sha256: str) -> bool:
        # Trials record their artifact as the `artifact` user attribute, {"sha256": ...}, in
        # Optuna's own table; anything unsure counts as named, so nothing a trial made goes.
        try:
            return artifact_named_by_a_trial(self.db.engine, sha256)
        except StorageError:
            return True


def _modified_after(path: Path, moment: float) -> bool:
    try:
        return path.stat().st_mtime > moment
    except FileNotFoundError:
        return False
