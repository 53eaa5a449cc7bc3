"""The Python SDK of the edgetune REST API."""

from __future__ import annotations

from edgetune.client._client import APIError, AskedTrial, Client, local_token

__all__ = ["APIError", "AskedTrial", "Client", "local_token"]
