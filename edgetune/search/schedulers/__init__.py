"""Early stopping of our own: mo-asha, successive halving for several objectives.

Its bookkeeping lives in trial system attributes (`mo_asha:*`), so any worker can resume it.
"""

from edgetune.search.schedulers._mo_asha import MOASHAPruner, report_progress, report_values

__all__ = ["MOASHAPruner", "report_progress", "report_values"]
