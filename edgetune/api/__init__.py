"""The REST API (FastAPI)."""

from __future__ import annotations

from edgetune.api.main import API_PREFIX, create_app

__all__ = ["API_PREFIX", "create_app"]
