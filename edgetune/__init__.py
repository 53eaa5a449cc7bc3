"""edgetune: multi-objective search for models that ship to real hardware."""

from __future__ import annotations

__version__ = "0.1.0"
