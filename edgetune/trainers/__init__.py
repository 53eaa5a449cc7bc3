"""Trainers: the `Trainer` protocol and the registry that finds one by name."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from edgetune.errors import InvalidSpecError
from edgetune.trainers._base import FitResult, Report, Trainer

__all__ = ["FitResult", "Report", "Trainer", "available_trainers", "get_trainer_class"]

#: Built-in trainers, so they work from a source checkout too; installed packages add more
#: through the `edgetune.trainers` entry-point group.
_BUILTIN = {
    "image-classifier": "edgetune.trainers._image:ImageClassifier",
    "tabular-classifier": "edgetune.trainers._tabular:TabularClassifier",
    "function": "edgetune.trainers._function:FunctionTrainer",
}


def available_trainers() -> dict[str, str]:
    """Trainer name -> "module:Class", built-ins first, then installed entry points."""
    found = dict(_BUILTIN)
    for ep in entry_points(group="edgetune.trainers"):
        found.setdefault(ep.name, ep.value)
    return found


def get_trainer_class(name: str) -> type[Trainer]:
    """Import and return the trainer class registered as `name`."""
    targets = available_trainers()
    if name not in targets:
        raise InvalidSpecError(
            "trainer.name", f"unknown trainer {name!r}; known trainers: {', '.join(targets)}"
        )
    module_name, _, attr = targets[name].partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Trainer)):
        raise InvalidSpecError("trainer.name", f"{targets[name]} is not a Trainer subclass")
    return cls
