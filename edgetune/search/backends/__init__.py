"""Backends that run a job's trials: `optuna` (worker processes) and `ray` (Ray Tune).

`edgetune.search.backends.ray` imports Ray, so it is imported only for a job that needs it.
"""

from __future__ import annotations

from typing import Protocol

from edgetune.search.backends.optuna import JobControl, JobOutcome, OptunaBackend
from edgetune.spec import JobSpec
from edgetune.storage import Job


class Backend(Protocol):
    """Runs one claimed job to its end, or until `control` says to hand it back."""

    def run(self, job: Job, spec: JobSpec, control: JobControl) -> JobOutcome: ...


class RunToEnd:
    """A `JobControl` for running a job in a script or a test, outside any worker: the job is
    never taken over, cancelled or stopped."""

    def heartbeat(self) -> bool:
        return True

    def cancel_requested(self) -> bool:
        return False

    def should_stop(self) -> bool:
        return False


__all__ = ["Backend", "JobControl", "JobOutcome", "OptunaBackend", "RunToEnd"]
