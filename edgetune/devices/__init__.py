"""Devices: measuring how fast an exported model runs, with pluggable runtimes, and the agent
that measures a registered device's probes, and latency predictors fitted on its measurements."""

from __future__ import annotations

from edgetune.devices.agent import Agent, describe_hardware
from edgetune.devices.latency import LatencyResult, MeasureConfig, measure_latency
from edgetune.devices.predictor import LatencyPredictor, graph_features
from edgetune.devices.runtimes import RUNTIMES, default_runtime, get_runtime

__all__ = [
    "RUNTIMES",
    "Agent",
    "LatencyPredictor",
    "LatencyResult",
    "MeasureConfig",
    "default_runtime",
    "describe_hardware",
    "get_runtime",
    "graph_features",
    "measure_latency",
]
