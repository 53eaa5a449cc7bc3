"""Example JobSpecs shipped with edgetune (the demo search)."""
