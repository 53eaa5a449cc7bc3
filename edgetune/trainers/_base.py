"""The Trainer protocol: how a trial turns sampled parameters into a trained model."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgetune.spaces import Param, ParamValue

if TYPE_CHECKING:
    from edgetune.spec import JobSpec, TrainerSpec

#: Called by a trainer after each epoch with the epoch (counting from 1) and the metrics known
#: at that point: at least the trainer's `progress_metrics` (validation accuracy for the
#: classifiers). It raises `edgetune.errors.TrialPruned` when the pruner stops the trial, and
#: the trainer lets that exception through.
Report = Callable[[int, Mapping[str, float]], None]


@dataclass
class FitResult:
    """What `Trainer.fit` hands back: the model to export and the metrics it reached."""

    #: torch.nn.Module (typed loosely so this module never imports torch); None when there is
    #: no model to export (the `function` trainer), and `metrics` hold every objective.
    model: Any
    example_input: Any = None  # torch.Tensor of the model's input shape, batch size 1
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
    #: The metrics a trial of this trainer measures (the objectives a job may name).
    metrics: ClassVar[tuple[str, ...]] = (
        "accuracy", "latency_ms", "size_bytes", "params", "flops", "sparsity",
    )
    #: The metrics each `report` carries, which pruners and schedulers compare between epochs.
    progress_metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    #: Parameters that may change between epochs of one trial without rebuilding the model
    #: (what PBT explores when it restarts a trial from another one's checkpoint).
    mutable_params: ClassVar[frozenset[str]] = frozenset()

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

    @classmethod
    def validate_job(cls, spec: JobSpec, params: Sequence[Param]) -> None:
        """Raise `InvalidSpecError` for rules across a job's parts; `params` is its resolved
        space. Called after `validate_spec` and `validate_space`. Checks by default that every
        objective and constraint is a metric this trainer measures."""
        from edgetune.errors import InvalidSpecError

        named = [(f"objectives.{i}.name", o.name) for i, o in enumerate(spec.objectives)]
        named += [(f"constraints.{i}.metric", c.metric) for i, c in enumerate(spec.constraints)]
        for where, metric in named:
            if metric not in cls.metrics:
                raise InvalidSpecError(
                    where, f"{cls.name} does not measure {metric!r}; it measures: "
                           f"{', '.join(cls.metrics)}"
                )

    @classmethod
    def is_mutable(cls, name: str) -> bool:
        """Whether parameter `name` may change between epochs of one trial (see
        `mutable_params`)."""
        return name in cls.mutable_params

    def untrained(self, params: Mapping[str, ParamValue]) -> FitResult | None:
        """The candidate as it would ship, before any training: its architecture (and
        compression that changes it) with initial weights, for latency measured before
        training so that a candidate past a latency constraint is pruned at no training cost.
        Called before `fit`, only when the job has a latency constraint. None (the default):
        this trainer cannot tell, and latency is measured after training only."""
        return None

    @abc.abstractmethod
    def fit(
        self, params: Mapping[str, ParamValue], *, report: Report,
        checkpoint_dir: Path | None = None,
    ) -> FitResult:
        """Train one candidate built from `params` for `spec.epochs` epochs.

        With `checkpoint_dir`, save a checkpoint there after every epoch and, when one is
        already there, resume from it (a resumed trial, or a PBT exploit).
        """
