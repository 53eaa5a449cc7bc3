"""Devices: measuring how fast an exported model runs, with pluggable runtimes, and the agent
that measures a registered device's probes."""

from __future__ import annotations

from edgetune.devices.agent import Agent, describe_hardware
from edgetune.devices.latency import LatencyResult, MeasureConfig, measure_latency
from edgetune.devices.runtimes import RUNTIMES, default_runtime, get_runtime

__all__ = [
    "RUNTIMES",
    "Agent",
    "LatencyResult",
    "MeasureConfig",
    "default_runtime",
    "describe_hardware",
    "get_runtime",
    "measure_latency",
]
