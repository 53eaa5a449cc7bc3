"""The Trainer protocol: how a trial turns sampled parameters into a trained model."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from edgetune.spaces import ParamValue

if TYPE_CHECKING:
    from edgetune.spec import TrainerSpec

#: Called by a trainer after each epoch with (epoch, validation accuracy); epochs count from 1.
#: It raises `edgetune.errors.TrialPruned` when the pruner stops the trial, and the trainer
#: lets that exception through.
Report = Callable[[int, float], None]


@dataclass
class FitResult:
    """What `Trainer.fit` hands back: the model to export and the metrics it reached."""

    model: Any  # torch.nn.Module; typed loosely so this module never imports torch
    example_input: Any  # torch.Tensor of the model's input shape, batch size 1
    metrics: dict[str, float] = field(default_factory=dict)  # at least "accuracy"


class Trainer(abc.ABC):
    """Builds, trains and evaluates one candidate per trial.

    The framework calls, in order: `validate_spec` at submission (in the API process, which
    may not have torch: a trainer module imports torch inside its methods); then, in the
    trial's own child process, `__init__(spec)` and `fit(params, report=...)` once.
    `fit` must not write anywhere but its return value; the framework exports the model and
    measures it.
    """

    #: The name used in `JobSpec.trainer.name`.
    name: ClassVar[str]
    #: The datasets this trainer can load, by name.
    datasets: ClassVar[tuple[str, ...]]

    def __init__(self, spec: TrainerSpec) -> None:
        self.spec = spec

    @classmethod
    def validate_spec(cls, spec: TrainerSpec) -> None:
        """Raise `InvalidSpecError` for options this trainer cannot honour. Cheap: no I/O."""

    @abc.abstractmethod
    def fit(self, params: Mapping[str, ParamValue], *, report: Report) -> FitResult:
        """Train one candidate built from `params` for `spec.epochs` epochs."""
