"""Samplers of our own, beside Optuna's: a grid over active combinations and the RL controller.

They are Optuna samplers, so either backend runs them, and both keep their state in the study.
"""

from edgetune.search.samplers._grid import (
    GRID_ID_KEY,
    InfiniteGridError,
    SpaceGridSampler,
    grid_points,
    grid_size,
)
from edgetune.search.samplers._rl import MnasNetReward, Reward, RLSampler, ScalarizedReward

__all__ = [
    "GRID_ID_KEY",
    "InfiniteGridError",
    "MnasNetReward",
    "RLSampler",
    "Reward",
    "ScalarizedReward",
    "SpaceGridSampler",
    "grid_points",
    "grid_size",
]
