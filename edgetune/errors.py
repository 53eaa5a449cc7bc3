"""One exception hierarchy for edgetune, grouped by what the caller should do."""

from __future__ import annotations


class EdgetuneError(Exception):
    """Base of every error edgetune raises on purpose."""


# --- fix the input -------------------------------------------------------------------------
class InvalidSpecError(EdgetuneError, ValueError):
    """A JobSpec (or another request) breaks a rule; `field` names where, as a dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class NotFoundError(EdgetuneError, LookupError):
    """The named resource does not exist (or belongs to someone else)."""


class ConflictError(EdgetuneError):
    """The resource is in a state that does not allow the operation (e.g. cancel a finished job)."""


class AuthenticationError(EdgetuneError):
    """The request carries no token, or one that is unknown or revoked: send a valid token."""


class PermissionDeniedError(EdgetuneError):
    """The token is valid but its scope does not allow the operation: use another token."""


class MissingDependencyError(EdgetuneError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"`{package}` is not installed; install it with `pip install 'edgetune[{extra}]'`."
        )
        self.package = package
        self.extra = extra


# --- retry ---------------------------------------------------------------------------------
class StorageError(EdgetuneError):
    """The database failed; wraps the driver's error once. Usually worth retrying."""


class RateLimitedError(EdgetuneError):
    """The token made too many requests; retry after `retry_after_s` seconds."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many requests; retry after {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


# --- give up on this trial -----------------------------------------------------------------
class TrialPruned(EdgetuneError):
    """Raised inside a trial when the pruner decides to stop it early. Not a failure."""


class TrialFailed(EdgetuneError):
    """A trial could not produce its objective values; the message is shown to the user."""
