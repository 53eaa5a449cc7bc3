"""A worker's trial slots, shared by the jobs it runs at once, and each tenant's limit on
running trials across the whole database: so that one tenant's huge job cannot keep another
tenant's small one waiting, nor start a training process per unit of its parallelism."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edgetune.errors import StorageError

logger = logging.getLogger(__name__)


@dataclass
class _JobShare:
    tenant: str
    running: int = 0  # as the job last reported
    held: int = 0  # a slot granted since, for a trial not reported yet
    waiting: bool = False  # refused a slot at its last ask


class TrialSlots:
    """The trial processes one worker may run, drawn by its jobs (each in its own thread).

    A job calls `may_start(job_id, tenant, running)` before each trial it would start, with
    the number of its trials running now; True grants it one slot more, held until its next
    call (which reports whether it started the trial). `leave` frees a job's slots when its
    run ends. The rules, in order:

    - no more than `max_trials` trials in the worker;
    - no more than `tenant_max_trials` running trials of one tenant in the whole database
      (counted by `count_tenant_trials`; workers asking at the same instant may pass it by a
      trial each, for the moment it takes them to start it);
    - `spare` slots are kept for jobs that run no trial yet: a job just claimed starts at
      once, however much another job could use;
    - a job at or above its fair share (the slots over the jobs this worker runs) starts no
      more while another job of the worker waits for a slot.
    """

    def __init__(
        self, *, max_trials: int, spare: int = 0, tenant_max_trials: int | None = None,
        count_tenant_trials: Callable[[str], int] | None = None,
    ) -> None:
        if max_trials < 1:
            raise ValueError(f"The value of `max_trials` is {max_trials}, but must be >= 1.")
        if spare < 0:
            raise ValueError(f"The value of `spare` is {spare}, but must be >= 0.")
        if tenant_max_trials is not None and tenant_max_trials < 1:
            raise ValueError(f"The value of `tenant_max_trials` is {tenant_max_trials}, but "
                             "must be >= 1 (or None: no limit).")
        if tenant_max_trials is not None and count_tenant_trials is None:
            raise ValueError("`tenant_max_trials` needs `count_tenant_trials`")
        self.max_trials = max_trials
        # A worker of one slot keeps none spare: it would never run a trial beside another.
        self.spare = min(spare, max_trials - 1)
        self.tenant_max_trials = tenant_max_trials
        self.count_tenant_trials = count_tenant_trials
        self._jobs: dict[str, _JobShare] = {}
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        with self._lock:
            return self._used()

    @property
    def free(self) -> int:
        """Slots no job holds: while there are some, the worker claims more jobs."""
        with self._lock:
            return self.max_trials - self._used()

    @property
    def jobs(self) -> int:
        with self._lock:
            return len(self._jobs)

    def may_start(self, job_id: str, tenant: str, running: int) -> bool:
        with self._lock:
            share = self._jobs.setdefault(job_id, _JobShare(tenant))
            share.running, share.held = running, 0
            granted = self._grantable(job_id, share)
            share.waiting = not granted
            if granted:
                share.held = 1
        if granted and self.tenant_max_trials is not None:
            # Outside the worker's lock: a database round trip must not hold up other jobs.
            granted = self._under_tenant_limit(tenant)
            with self._lock:
                share.held = int(granted)
                share.waiting = not granted
        return granted

    def leave(self, job_id: str) -> None:
        """The job's run ended (or handed the job back): its slots are free."""
        with self._lock:
            self._jobs.pop(job_id, None)

    def _used(self) -> int:
        return sum(s.running + s.held for s in self._jobs.values())

    def _grantable(self, job_id: str, share: _JobShare) -> bool:
        free = self.max_trials - self._used()
        if free <= 0:
            return False
        if share.running == 0:
            return True  # a job's first trial may take a spare slot
        if free <= self.spare:
            return False
        fair = math.ceil(self.max_trials / len(self._jobs))
        others_wait = any(s.waiting for j, s in self._jobs.items() if j != job_id)
        return not (share.running >= fair and others_wait)

    def _under_tenant_limit(self, tenant: str) -> bool:
        assert self.count_tenant_trials is not None and self.tenant_max_trials is not None
        try:
            running = self.count_tenant_trials(tenant)
        except StorageError as e:
            logger.warning("could not count the running trials of tenant %r (%s); starting "
                           "none until it answers", tenant, e)
            return False
        # Slots this worker granted to the tenant whose trials may not be in the database yet.
        with self._lock:
            pending = sum(s.held for s in self._jobs.values() if s.tenant == tenant) - 1
        return running + pending < self.tenant_max_trials
