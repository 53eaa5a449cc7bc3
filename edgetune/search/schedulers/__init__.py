"""Early stopping of our own: mo-asha, successive halving for several objectives, and
successive halving whose rungs follow the rank correlation of early and final scores.

Their bookkeeping lives in the study's trials (`mo_asha:*` system attributes, intermediate
values), so any worker can resume it.
"""

from edgetune.search.schedulers._fidelity import (
    FidelityEstimate,
    FidelityHalvingPruner,
    fidelity_estimate,
    kendall_tau,
    reported_values,
    spearman_rho,
)
from edgetune.search.schedulers._mo_asha import MOASHAPruner, report_progress, report_values

__all__ = [
    "FidelityEstimate",
    "FidelityHalvingPruner",
    "MOASHAPruner",
    "fidelity_estimate",
    "kendall_tau",
    "report_progress",
    "report_values",
    "reported_values",
    "spearman_rho",
]
