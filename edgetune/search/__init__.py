"""Search: the algorithm registry, the backends that run trials, workers and Pareto ranking."""

from __future__ import annotations

from edgetune.search.registry import (
    PRUNERS,
    SAMPLERS,
    AlgorithmContext,
    PrunerEntry,
    SamplerEntry,
    register_pruner,
    register_sampler,
)
from edgetune.search.validation import validate_job_spec

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "AlgorithmContext",
    "PrunerEntry",
    "SamplerEntry",
    "register_pruner",
    "register_sampler",
    "validate_job_spec",
]
