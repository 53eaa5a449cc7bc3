"""The probe queue: latency measurements requested by trials, leased to device agents, cached.

A probe goes pending -> leased -> done or failed. An agent leases the oldest pending probe of
its device for a while; if it stops answering, the lease expires and another agent (or the
same one, restarted) leases the probe again, up to `max_attempts` leases, after which the probe
fails. A probe not measured within `expire_s` of its request (no agent ever took it, or its
agents died) fails too. Done and failed are final: whatever comes later changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, true, update
from sqlalchemy.orm import Session

from edgetune.errors import ConflictError, InvalidSpecError, NotFoundError, StorageError
from edgetune.storage.db import Database
from edgetune.storage.devices import DeviceRepository, check_int
from edgetune.storage.jobs import Repository, utcnow
from edgetune.storage.models import LIVE_PROBE_STATUSES, Probe, ProbeStatus

#: Leases a probe may be handed before its agents are deemed unable to measure it.
MAX_ATTEMPTS = 3
#: The statistics every result carries; each a finite number of milliseconds >= 0.
RESULT_TIMES = ("p50_ms", "p90_ms", "mean_ms", "std_ms")
MAX_INPUT_DIMS = 16
#: The most input elements (batch included) of one probe, unless the repository is told
#: otherwise (`EDGETUNE_PROBE_MAX_INPUT_ELEMENTS`): 2^25 float32 are 128 MiB.
MAX_INPUT_ELEMENTS = 1 << 25
#: A failure reason is stored at most this long, printable characters only.
MAX_REASON_CHARS = 500
#: Attempts at inserting a probe that identical racing requests keep inserting first.
_INSERT_TRIES = 5
_SHA256 = re.compile(r"[0-9a-f]{64}")


def probe_cache_key(
    device_id: str,
    *,
    artifact_sha256: str,
    runtime: str,
    input_shape: Sequence[int],
    batch_size: int,
    threads: int,
    warmup: int,
    min_repeats: int,
    min_time_s: float,
) -> str:
    """The sha256 of the canonical JSON of what decides a measurement: requests with the same
    key measure the same thing, so one measurement answers them all."""
    config = {
        "artifact_sha256": artifact_sha256, "device_id": device_id, "runtime": runtime,
        "input_shape": [int(d) for d in input_shape], "batch_size": int(batch_size),
        "threads": int(threads), "warmup": int(warmup), "min_repeats": int(min_repeats),
        "min_time_s": float(min_time_s),  # 1 and 1.0 are one config
    }
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ProbeRepository(Repository):
    """Every read and write of `edgetune_probes`. Driver errors surface as `StorageError`.

    Who may report on a probe: only the current holder of its lease (the owner it leased it
    under) completes or fails it; anyone else is refused (`ConflictError`), also an agent whose
    lease expired and was taken over, since a result nobody asked of it cannot be told from a
    forged one, and a forged result would be served from the cache to every later request.
    The holder's retries after the probe finished change nothing.

    `max_input_elements` bounds a probe's input (batch included): an agent builds that array.

    `expire_s` (None: never) is how long a probe may go unmeasured after its request: past it,
    a pending probe, or a leased one whose lease ran out, fails saying so, wherever it is next
    read, leased, waited on or asked for again (`expire_overdue`). A live lease is let run: its
    holder may still report. Only then does a failed probe free its key for a new request, and
    its upload for the collector.
    """

    def __init__(self, db: Database, *, max_attempts: int = MAX_ATTEMPTS,
                 max_input_elements: int = MAX_INPUT_ELEMENTS,
                 expire_s: float | None = None) -> None:
        super().__init__(db)
        check_int("max_attempts", max_attempts, 1)
        check_int("max_input_elements", max_input_elements, 1)
        if expire_s is not None and (isinstance(expire_s, bool) or not expire_s > 0
                                     or not math.isfinite(expire_s)):
            raise ValueError(f"The value of `expire_s` is {expire_s!r}, but must be a finite "
                             "number > 0 or None.")
        self.max_attempts = max_attempts
        self.max_input_elements = max_input_elements
        self.expire_s = expire_s
        self._devices = DeviceRepository(db)

    # --- the trial's side ----------------------------------------------------------------
    def request(
        self,
        device_id: str,
        *,
        artifact_sha256: str,
        runtime: str,
        input_shape: Sequence[int],
        batch_size: int,
        threads: int,
        warmup: int,
        min_repeats: int,
        min_time_s: float,
        tenant: str | None = None,
    ) -> Probe:
        """The probe that answers this measurement: a done one with the same cache key, as is;
        else a pending or leased one with the same key, shared; else a new pending one. A failed
        probe answers nothing: asking again measures again.

        The probe belongs to the device's tenant; with `tenant`, another tenant's device is not
        found. Raises `InvalidSpecError` (a `ValueError`) naming a bad argument, among them a
        runtime the device does not offer.
        """
        artifact_sha256 = _checked_sha256(artifact_sha256)
        shape = _checked_shape(input_shape)
        for field, value, low in (("batch_size", batch_size, 1), ("threads", threads, 1),
                                  ("warmup", warmup, 0), ("min_repeats", min_repeats, 1)):
            check_int(field, value, low)
        check_input_elements(shape, batch_size, self.max_input_elements)
        if (isinstance(min_time_s, bool) or not isinstance(min_time_s, int | float)
                or not math.isfinite(min_time_s) or min_time_s < 0):
            raise InvalidSpecError("min_time_s", f"The value of `min_time_s` is {min_time_s!r}, "
                                                 "but must be a finite number >= 0.")
        device = self._devices.get(device_id, tenant=tenant)
        if runtime not in device.runtimes:
            raise InvalidSpecError("runtime", f"device {device.name!r} does not offer runtime "
                                              f"{runtime!r}; it offers {device.runtimes}")
        key = probe_cache_key(device.id, artifact_sha256=artifact_sha256, runtime=runtime,
                              input_shape=shape, batch_size=batch_size, threads=threads,
                              warmup=warmup, min_repeats=min_repeats, min_time_s=min_time_s)
        for _ in range(_INSERT_TRIES):
            with self._session() as session:
                # An overdue probe answers nothing: it fails, and this request queues anew.
                self._expire(session, Probe.cache_key == key)
            with self._session() as session:
                cached = session.scalars(
                    select(Probe)
                    .where(Probe.cache_key == key,
                           Probe.status.in_([ProbeStatus.DONE.value, *LIVE_PROBE_STATUSES]))
                    # A done one first, then the newest.
                    .order_by((Probe.status == ProbeStatus.DONE.value).desc(),
                              Probe.created_at.desc())
                    .limit(1)
                ).first()
                if cached is not None:
                    return cached
            probe = Probe(
                id=str(uuid.uuid4()), tenant=device.tenant, device_id=device.id,
                artifact_sha256=artifact_sha256, runtime=runtime, input_shape=shape,
                batch_size=batch_size, threads=threads, warmup=warmup, min_repeats=min_repeats,
                min_time_s=float(min_time_s), cache_key=key, status=ProbeStatus.PENDING.value,
                attempts=0, created_at=utcnow(),
            )
            # At most one live probe per key (a partial unique index): an identical request
            # that inserted first wins, and this one shares its probe on the next pass. On
            # PostgreSQL the foreign key refuses it too when the device was deleted meanwhile,
            # and the next pass says not found.
            if self._insert_unless_taken(probe):
                return probe
            self._devices.get(device_id, tenant=tenant)
        raise StorageError(f"could not queue a probe for device {device_id!r}: identical "
                           f"requests kept racing it for {_INSERT_TRIES} tries; try again")

    def get(self, probe_id: str, *, tenant: str | None = None) -> Probe:
        with self._session() as session:
            # Shown as it is: failed when its last lease ran out, or it expired.
            self._fail_exhausted(session, Probe.id == probe_id)
            self._expire(session, Probe.id == probe_id)
        with self._session() as session:
            return _probe(session, probe_id, tenant)

    def expire_overdue(self, *, tenant: str | None = None) -> int:
        """Fail the probes (of `tenant`, or all) unmeasured for longer than `expire_s` (how
        many; none when `expire_s` is None), and those whose last allowed lease ran out."""
        scope = Probe.tenant == tenant if tenant is not None else true()
        with self._session() as session:
            self._fail_exhausted(session, scope)
            return self._expire(session, scope)

    def measures_artifact(self, artifact_sha256: str, *, tenant: str) -> bool:
        """Whether a probe of `tenant` names this artifact: what lets the tenant's agents (and
        users) fetch it by its hash."""
        with self._session() as session:
            return session.scalar(
                select(Probe.id).where(Probe.artifact_sha256 == artifact_sha256,
                                       Probe.tenant == tenant).limit(1)
            ) is not None

    def count_live(self, *, tenant: str) -> int:
        """How many probes of `tenant` wait for an agent (pending or leased)."""
        with self._session() as session:
            return int(session.scalar(
                select(func.count()).select_from(Probe)
                .where(Probe.tenant == tenant, Probe.status.in_(LIVE_PROBE_STATUSES))
            ) or 0)

    def wait(self, probe_id: str, *, timeout_s: float, poll_s: float = 0.5,
             tenant: str | None = None) -> Probe:
        """The probe once done or failed, or as it is when `timeout_s` has passed.

        A probe whose last allowed lease expired is failed here too (as by `get`), so that a
        trial whose device's agents all died learns it without waiting for one to come back.
        """
        if not timeout_s >= 0:
            raise ValueError(f"The value of `timeout_s` is {timeout_s}, but must be >= 0.")
        if not poll_s > 0:
            raise ValueError(f"The value of `poll_s` is {poll_s}, but must be > 0.")
        deadline = time.monotonic() + timeout_s
        while True:
            probe = self.get(probe_id, tenant=tenant)
            left = deadline - time.monotonic()
            if ProbeStatus(probe.status).finished or left <= 0:
                return probe
            time.sleep(min(poll_s, left))

    def history(self, device_id: str, *, limit: int = 1000) -> list[Probe]:
        """The device's done probes, newest first: what its latency predictor learns from."""
        check_int("limit", limit, 1)
        with self._session() as session:
            return list(session.scalars(
                select(Probe)
                .where(Probe.device_id == device_id, Probe.status == ProbeStatus.DONE.value)
                .order_by(Probe.finished_at.desc(), Probe.id)
                .limit(limit)
            ).all())

    def list(
        self,
        *,
        tenant: str | None = None,
        device_id: str | None = None,
        status: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[Sequence[Probe], int]:
        """Probes newest first, and how many match in all."""
        self.expire_overdue(tenant=tenant)
        query = select(Probe)
        if tenant is not None:
            query = query.where(Probe.tenant == tenant)
        if device_id is not None:
            query = query.where(Probe.device_id == device_id)
        if status is not None:
            query = query.where(Probe.status == status)
        return self._page(query.order_by(Probe.created_at.desc(), Probe.id), offset, limit)

    # --- the agent's side ----------------------------------------------------------------
    def lease(self, device_id: str, owner: str, *, lease_s: float) -> Probe | None:
        """Hand `owner` the device's oldest probe to measure for `lease_s` seconds: a pending
        one, or a leased one whose lease expired; None when there is none.

        Taking one is a compare-and-set UPDATE, so of agents racing for a probe only one gets
        it, on SQLite or PostgreSQL alike. An expired probe already leased `max_attempts` times
        is failed instead of leased again.
        """
        _check_owner(owner)
        if not lease_s > 0:
            raise ValueError(f"The value of `lease_s` is {lease_s}, but must be > 0.")
        with self._session() as session:
            self._fail_exhausted(session, Probe.device_id == device_id)
            self._expire(session, Probe.device_id == device_id)
        now = utcnow()
        takeable = or_(
            Probe.status == ProbeStatus.PENDING.value,
            and_(Probe.status == ProbeStatus.LEASED.value, Probe.lease_expires_at < now,
                 Probe.attempts < self.max_attempts),
        )
        with self._session() as session:
            while True:
                candidates = session.scalars(
                    select(Probe.id).where(Probe.device_id == device_id, takeable)
                    .order_by(Probe.created_at, Probe.id).limit(5)
                ).all()
                if not candidates:
                    return None
                for probe_id in candidates:
                    result = session.execute(
                        update(Probe)
                        .where(Probe.id == probe_id, takeable)
                        .values(status=ProbeStatus.LEASED.value, lease_owner=owner,
                                lease_expires_at=now + timedelta(seconds=lease_s),
                                attempts=Probe.attempts + 1)
                        .execution_options(synchronize_session=False)
                    )
                    if result.rowcount == 1:  # type: ignore[attr-defined]
                        return session.get(Probe, probe_id, populate_existing=True)
                # Every one of them went to a racing agent: look again.

    def complete(self, probe_id: str, owner: str, result: dict[str, Any], *,
                 tenant: str | None = None) -> Probe:
        """Store the measurement of the probe `owner` holds the lease of, once, and return
        the probe.

        The holder reporting again on its final probe changes nothing (a retried POST). The
        done probe's `lease_owner` is who measured it. Raises `InvalidSpecError` naming a bad
        field of `result`, `ConflictError` for a probe `owner` does not hold (nobody leased it,
        another agent holds it, or another agent finished it).
        """
        _check_owner(owner)
        measured = checked_result(result)
        return self._finish(probe_id, owner, tenant, ProbeStatus.DONE, result=measured)

    def fail(self, probe_id: str, owner: str, reason: str, *,
             tenant: str | None = None) -> Probe:
        """Fail the probe `owner` holds the lease of, with `reason` (which the trial shows;
        kept printable and at most `MAX_REASON_CHARS` long). The holder reporting again on its
        final probe changes nothing; `ConflictError` as `complete`."""
        _check_owner(owner)
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidSpecError("reason", "A failed probe needs a reason.")
        return self._finish(probe_id, owner, tenant, ProbeStatus.FAILED,
                            error=bounded_reason(reason))

    def renew(self, probe_id: str, owner: str, *, lease_s: float,
              tenant: str | None = None) -> Probe:
        """Extend the lease `owner` holds on a probe it still measures to `lease_s` seconds
        from now, so that a measurement longer than one lease is not taken over by another
        agent, while a dead agent's lease still runs out after `lease_s`. `ConflictError` as
        `complete` for a probe `owner` does not hold."""
        _check_owner(owner)
        if not lease_s > 0:
            raise ValueError(f"The value of `lease_s` is {lease_s}, but must be > 0.")
        probe = self._update_held(probe_id, owner, tenant,
                                  lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        if probe.status != ProbeStatus.LEASED or probe.lease_owner != owner:
            raise ConflictError(f"probe {probe_id!r} is not leased to this agent: only the "
                                "holder of its lease may renew it")
        return probe

    # --- internals -------------------------------------------------------------------------
    def _finish(self, probe_id: str, owner: str, tenant: str | None, status: ProbeStatus,
                **values: Any) -> Probe:
        probe = self._update_held(probe_id, owner, tenant, status=status.value,
                                  lease_expires_at=None, finished_at=utcnow(), **values)
        if probe.status == ProbeStatus.PENDING:
            raise ConflictError(f"probe {probe_id!r} is not leased: lease it to measure it")
        if probe.lease_owner != owner:
            raise ConflictError(f"probe {probe_id!r} is not leased to this agent: only the "
                                "holder of its lease may report on it")
        return probe

    def _update_held(self, probe_id: str, owner: str, tenant: str | None,
                     **values: Any) -> Probe:
        """Set `values` on the probe if `owner` holds its lease, and return it as it is now.
        A compare-and-set on the holder: of a holder and anyone else racing, only the holder's
        write lands."""
        with self._session() as session:
            probe = _probe(session, probe_id, tenant)  # found, and the tenant's, first
            session.execute(
                update(Probe).where(Probe.id == probe.id,
                                    Probe.status == ProbeStatus.LEASED.value,
                                    Probe.lease_owner == owner)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            return _probe(session, probe_id, tenant, fresh=True)

    def _expire(self, session: Session, scope: ColumnElement[bool]) -> int:
        """Fail the probes in `scope` requested more than `expire_s` ago and not measured: the
        pending ones, and the leased ones whose lease ran out. A read finds them first, so that
        reads of a healthy queue do not write."""
        if self.expire_s is None:
            return 0
        now = utcnow()
        overdue = and_(
            scope, Probe.created_at < now - timedelta(seconds=self.expire_s),
            or_(Probe.status == ProbeStatus.PENDING.value,
                and_(Probe.status == ProbeStatus.LEASED.value, Probe.lease_expires_at < now)),
        )
        found = session.scalars(select(Probe.id).where(overdue)).all()
        if not found:
            return 0
        result = session.execute(
            update(Probe).where(Probe.id.in_(found), overdue)
            .values(status=ProbeStatus.FAILED.value, finished_at=now, lease_expires_at=None,
                    error=f"no agent of the device measured the model within "
                          f"{self.expire_s:g} s of the request (probe_expire_s): is the "
                          "device's agent running? Ask again to queue it anew")
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    def _fail_exhausted(self, session: Session, scope: ColumnElement[bool]) -> None:
        """Fail the probes in `scope` whose last allowed lease expired. A read finds them first,
        so that an agent polling an idle queue does not write."""
        exhausted = and_(scope, Probe.status == ProbeStatus.LEASED.value,
                         Probe.lease_expires_at < utcnow(),
                         Probe.attempts >= self.max_attempts)
        found = session.scalars(select(Probe.id).where(exhausted)).all()
        if not found:
            return
        session.execute(
            update(Probe).where(Probe.id.in_(found), exhausted)
            .values(status=ProbeStatus.FAILED.value, finished_at=utcnow(), lease_expires_at=None,
                    error=f"the device's agents stopped answering while measuring, "
                          f"{self.max_attempts} times")
            .execution_options(synchronize_session=False)
        )


def check_input_elements(input_shape: Sequence[int], batch_size: int, maximum: int) -> None:
    """Raise `InvalidSpecError` naming `input_shape` when a batch of `batch_size` inputs of
    `input_shape` has more than `maximum` elements: the agent would build that array."""
    elements = math.prod(int(d) for d in input_shape) * int(batch_size)
    if elements > maximum:
        raise InvalidSpecError(
            "input_shape", f"The input of batch_size {batch_size} and input_shape "
                           f"{list(input_shape)} has {elements:,} elements, but must have at "
                           f"most {maximum:,} (probe_max_input_elements).")


def bounded_reason(reason: str) -> str:
    """`reason` with unprintable characters (NUL, escapes, newlines) dropped, at most
    `MAX_REASON_CHARS` long: a reason says what failed, it does not carry data."""
    printable = "".join(c if c.isprintable() else " " for c in reason).strip()
    if len(printable) <= MAX_REASON_CHARS:
        return printable or "no reason given"
    return printable[:MAX_REASON_CHARS - 3] + "..."


def checked_result(result: dict[str, Any]) -> dict[str, Any]:
    """`result` with its statistics checked: finite p50_ms, p90_ms, mean_ms and std_ms >= 0
    (p90 not below p50) and an integer n >= 1; anything else the agent adds must be JSON.
    Raises `InvalidSpecError` (a `ValueError`) naming the field."""
    if not isinstance(result, dict):
        raise InvalidSpecError("result", f"A result must be a JSON object, not {result!r}.")
    checked = dict(result)
    for field in RESULT_TIMES:
        value = result.get(field)
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value < 0):
            raise InvalidSpecError(f"result.{field}", f"The value of `{field}` is {value!r}, "
                                                      "but must be a finite number >= 0.")
        checked[field] = float(value)
    if checked["p90_ms"] < checked["p50_ms"]:
        raise InvalidSpecError("result.p90_ms", f"The value of `p90_ms` is {checked['p90_ms']}, "
                                                f"but must be >= p50_ms ({checked['p50_ms']}).")
    n = result.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidSpecError("result.n", f"The value of `n` is {n!r}, but must be an integer "
                                           ">= 1.")
    try:
        json.dumps(checked, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidSpecError("result", f"A result must be JSON: {e}") from e
    return checked


def _probe(session: Session, probe_id: str, tenant: str | None, *, fresh: bool = False) -> Probe:
    probe = session.get(Probe, probe_id, populate_existing=fresh)
    if probe is None or (tenant is not None and probe.tenant != tenant):
        raise NotFoundError(f"probe {probe_id!r} not found")
    return probe



def _check_owner(owner: str) -> None:
    if not isinstance(owner, str) or not 1 <= len(owner) <= 128:
        raise InvalidSpecError("owner", f"The lease owner {owner!r} must be 1-128 characters.")


def _checked_sha256(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower()):
        raise InvalidSpecError("artifact_sha256", f"The value of `artifact_sha256` is "
                                                  f"{sha256!r}, but must be 64 hex digits.")
    return sha256.lower()


def _checked_shape(shape: Sequence[int]) -> list[int]:
    if (isinstance(shape, str) or not isinstance(shape, Sequence)
            or not 1 <= len(shape) <= MAX_INPUT_DIMS):
        raise InvalidSpecError("input_shape", f"The value of `input_shape` is {shape!r}, but "
                                              f"must be a list of 1-{MAX_INPUT_DIMS} sizes.")
    for size in shape:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidSpecError("input_shape", f"The input size {size!r} must be an "
                                                  "integer >= 1.")
    return list(shape)
