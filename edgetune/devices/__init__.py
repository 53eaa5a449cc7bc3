"""Devices: measuring how fast an exported model runs, with pluggable runtimes."""

from __future__ import annotations

from edgetune.devices.latency import LatencyResult, MeasureConfig, measure_latency
from edgetune.devices.runtimes import RUNTIMES, default_runtime, get_runtime

__all__ = [
    "RUNTIMES",
    "LatencyResult",
    "MeasureConfig",
    "default_runtime",
    "get_runtime",
    "measure_latency",
]
