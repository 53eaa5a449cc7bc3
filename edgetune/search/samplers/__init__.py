"""Samplers of our own, beside Optuna's: a grid over active combinations, the RL controller, and
the wrapper that seeds each trial by its number.

They are Optuna samplers, so either backend runs them, and both keep their state in the study.
"""

from edgetune.search.samplers._grid import (
    GRID_ID_KEY,
    InfiniteGridError,
    SpaceGridSampler,
    grid_points,
    grid_size,
)
from edgetune.search.samplers._rl import (
    MnasNetReward,
    ParetoReward,
    Reward,
    RLSampler,
    ScalarizedReward,
)
from edgetune.search.samplers._trial_seeded import TrialSeededSampler, trial_seed

__all__ = [
    "GRID_ID_KEY",
    "InfiniteGridError",
    "MnasNetReward",
    "ParetoReward",
    "RLSampler",
    "Reward",
    "ScalarizedReward",
    "SpaceGridSampler",
    "TrialSeededSampler",
    "grid_points",
    "grid_size",
    "trial_seed",
]
