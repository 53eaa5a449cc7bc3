"""The Trainer protocol: how a trial turns sampled parameters into a trained model."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgetune.spaces import Param, ParamValue

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
    #: Precision of the exported model: one of `edgetune.trainers.knobs.QUANTIZATION`; the
    #: framework quantizes the exported file ("qat" models are quantized like "int8-static").
    quantization: str = "fp32"
    #: Inputs (numpy, float32) that calibrate static int8 quantization; needed for int8-static.
    calibration: Any = None
    #: (x, y) numpy arrays the exported model is evaluated on, so the recorded accuracy is the
    #: deployed (quantized) model's; None keeps `metrics["accuracy"]`.
    eval_data: tuple[Any, Any] | None = None
    #: The compression applied, as recorded on the trial.
    compression: dict[str, Any] = field(default_factory=dict)


class Trainer(abc.ABC):
    """Builds, trains and evaluates one candidate per trial.

    The framework calls, in order: `validate_spec` at submission (in the API process, which
    may not have torch: a trainer module imports torch inside its methods); then, in the
    trial's own child process, `__init__(spec, data_dir=..., cache_dir=...)` and
    `fit(params, report=...)` once. `fit` writes only to `checkpoint_dir` and `cache_dir`;
    the framework exports (and quantizes) the model it returns and measures it.
    """

    #: The name used in `JobSpec.trainer.name`.
    name: ClassVar[str]
    #: The datasets this trainer can load, by name.
    datasets: ClassVar[tuple[str, ...]]

    def __init__(
        self, spec: TrainerSpec, *, data_dir: Path | None = None, cache_dir: Path | None = None
    ) -> None:
        self.spec = spec
        #: The server's data directory: datasets and models a job names by file name live here.
        self.data_dir = data_dir
        #: A directory shared by the trials of one job, for what they compute once (a teacher).
        self.cache_dir = cache_dir

    @classmethod
    def validate_spec(cls, spec: TrainerSpec) -> None:
        """Raise `InvalidSpecError` for options this trainer cannot honour. Cheap: no I/O."""

    @classmethod
    def validate_space(cls, params: Sequence[Param]) -> None:
        """Raise `InvalidSpecError` for parameter values this trainer cannot honour. No I/O."""

    @abc.abstractmethod
    def fit(
        self, params: Mapping[str, ParamValue], *, report: Report,
        checkpoint_dir: Path | None = None,
    ) -> FitResult:
        """Train one candidate built from `params` for `spec.epochs` epochs.

        With `checkpoint_dir`, save a checkpoint there after every epoch and, when one is
        already there, resume from it (a resumed trial, or a PBT exploit).
        """
