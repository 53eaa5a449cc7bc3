"""The benchmarks' API token: one admin token for the servers they start and the clients they
run, since `edgetune serve` requires a token on every route but `/health`."""

from __future__ import annotations

import os

from edgetune.storage.tokens import new_token


def use_token() -> str:
    """Set `EDGETUNE_TOKEN` (what the SDK and the agent send) and `EDGETUNE_ADMIN_TOKEN` (what
    `edgetune serve` installs at start) for this process and every process it starts; a
    token already in `EDGETUNE_TOKEN` is kept."""
    token = os.environ.setdefault("EDGETUNE_TOKEN", new_token())
    os.environ["EDGETUNE_ADMIN_TOKEN"] = token
    return token
