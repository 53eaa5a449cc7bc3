"""What a user writes: the JobSpec and its parts. Pure pydantic; JSON in, JSON out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edgetune.errors import InvalidSpecError
from edgetune.spaces import BUILTIN_SPACES, MAX_PARAMS, Param

Direction = Literal["minimize", "maximize"]
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
OptionValue = Annotated[str, Field(max_length=1024)] | bool | int | float | None

#: Metrics a trial measures, with the direction that is better by default.
METRICS: dict[str, Direction] = {
    "accuracy": "maximize",
    "latency_ms": "minimize",
    "size_bytes": "minimize",
    "params": "minimize",
    "flops": "minimize",  # of one forward pass at batch size 1, by torch's flop counter
    "sparsity": "maximize",  # share of zero weights
    # The objectives of the `function` trainer's test problems (ZDT1, DTLZ2, sphere), which
    # check a search's settings in seconds.
    "f1": "minimize",
    "f2": "minimize",
    "f3": "minimize",
}
LOCAL_DEVICE = "local"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TrainerSpec(_Spec):
    """Which trainer builds and trains each candidate, and on what."""

    name: str = Field(default="image-classifier", pattern=NAME)
    dataset: str = Field(default="digits", pattern=NAME)
    epochs: int = Field(default=3, ge=1, le=10_000, description="Training epochs per trial.")
    batch_size: int = Field(default=64, ge=1, le=65_536)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1,  # numpy and torch take < 2^32
                             description="Defaults to the job's seed.")
    options: dict[Annotated[str, Field(pattern=NAME)], OptionValue] = Field(
        default_factory=dict, max_length=64, description="Trainer-specific options."
    )


class SpaceSpec(_Spec):
    """A built-in NAS space by name, plus extra parameters (which may narrow built-in ones)."""

    name: str | None = Field(default="cnn", description="A built-in space, or null for none.")
    params: list[Param] = Field(default_factory=list, max_length=MAX_PARAMS)

    @field_validator("name")
    @classmethod
    def _known_space(cls, name: str | None) -> str | None:
        if name is not None and name not in BUILTIN_SPACES:
            known = ", ".join(sorted(BUILTIN_SPACES))
            raise ValueError(f"unknown space {name!r}; known spaces: {known}")
        return name

    @field_validator("params")
    @classmethod
    def _unique_names(cls, params: list[Param]) -> list[Param]:
        if repeated := _repeated(p.name for p in params):
            raise ValueError(f"parameter names must be unique; repeated: {', '.join(repeated)}")
        return params


def _repeated(names: Iterable[str]) -> list[str]:
    counts = Counter(names)
    return sorted(n for n, c in counts.items() if c > 1)


def _metric_device(metric: str, device: str | None) -> str | None:
    """Check a metric name and its device; latency is on the built-in `local` by default."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
    if device is not None and metric != "latency_ms":
        raise ValueError(f"`device` applies to latency_ms only, not to {metric!r}")
    return LOCAL_DEVICE if metric == "latency_ms" and device is None else device


def metric_key(metric: str, device: str | None) -> str:
    """A metric's name as stored on trials: `latency_ms@device` for latency."""
    return f"{metric}@{device}" if device else metric


class ObjectiveSpec(_Spec):
    """A metric to optimize. `latency_ms` is measured on `device` (the built-in `local`)."""

    name: str
    direction: Direction | None = Field(default=None, description="Defaults by metric.")
    device: str | None = Field(default=None, pattern=NAME)
    mode: Literal["measured", "predicted"] = Field(
        default="measured",
        description="latency_ms on a registered device only: `predicted` estimates it with "
                    "the device's latency predictor (fitted on its probe history) instead of "
                    "measuring, to screen candidates fast; the trial records which it used.",
    )

    @model_validator(mode="after")
    def _check(self) -> ObjectiveSpec:
        self.device = _metric_device(self.name, self.device)
        if self.direction is None:
            self.direction = METRICS[self.name]
        if self.mode == "predicted" and (self.name != "latency_ms" or self.device == LOCAL_DEVICE):
            raise ValueError("mode 'predicted' is for latency_ms on a registered device (its "
                             "predictor learns from the device's measured probes); "
                             f"{self.name!r} on {self.device!r} is measured")
        return self

    @property
    def key(self) -> str:
        return metric_key(self.name, self.device)


class ConstraintSpec(_Spec):
    """A bound a trial must meet to be feasible, e.g. latency_ms <= 5 on `local`."""

    metric: str
    op: Literal["<=", ">="]
    bound: float
    device: str | None = Field(default=None, pattern=NAME)

    @model_validator(mode="after")
    def _check(self) -> ConstraintSpec:
        self.device = _metric_device(self.metric, self.device)
        return self

    @property
    def key(self) -> str:
        return metric_key(self.metric, self.device)

    def violation(self, value: float) -> float:
        """How far `value` is outside the bound: <= 0 when feasible (Optuna's convention)."""
        return value - self.bound if self.op == "<=" else self.bound - value


class OneShotSpec(_Spec):
    """One-shot NAS (Once-for-All style): one weight-sharing supernet over the `mobilenet`
    space is trained once; the job's first `budget.n_trials - finalists` trials are its
    subnets, evaluated with inherited weights in seconds (user attribute `one_shot: eval`);
    the last `finalists` trials train the best of those (the Pareto front, then the next
    ranks) as ordinary trials for `finetune_epochs` (default `trainer.epochs`) epochs
    (`one_shot: finetune`)."""

    supernet_epochs: int = Field(
        default=20, ge=1, le=1000,
        description="Epochs of supernet training (each step trains the largest, the smallest "
                    "and `random_subnets` random subnets).",
    )
    random_subnets: int = Field(default=2, ge=0, le=8,
                                description="Random subnets per training step (sandwich rule).")
    distill: bool = Field(default=True, description="In-place distillation from the largest "
                                                    "subnet to the others.")
    finalists: int = Field(default=4, ge=1, le=64,
                           description="Subnets of the front trained as ordinary trials.")
    finetune: Literal["inherit", "scratch"] = Field(
        default="inherit",
        description="Finalists start from the supernet's weights (inherit) or from scratch.",
    )
    finetune_epochs: int | None = Field(
        default=None, ge=1, le=10_000,
        description="Epochs each finalist trains; default trainer.epochs.",
    )


class AlgorithmSpec(_Spec):
    """How to search: the backend, the sampler and the pruner or scheduler (registry names)."""

    backend: Literal["optuna", "ray"] = "optuna"
    sampler: str = Field(default="tpe", pattern=NAME)
    pruner: str = Field(default="none", pattern=NAME)
    options: dict[Annotated[str, Field(pattern=NAME)], OptionValue] = Field(
        default_factory=dict, max_length=32,
        description="Sampler and pruner settings, such as the RL controller's reward.",
    )
    one_shot: OneShotSpec | None = Field(
        default=None, description="Search a trained supernet's subnets instead of training "
                                  "every candidate (image-classifier, mobilenet space).",
    )


class BudgetSpec(_Spec):
    """When the job ends, and how many trials run at once."""

    n_trials: int = Field(default=20, ge=1, le=100_000)
    timeout_s: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)
    parallelism: int = Field(default=1, ge=1, le=64)


class TrialResources(_Spec):
    """What one trial holds while it runs; the ray backend schedules trials by it."""

    cpus: float = Field(
        default=1.0, gt=0, le=1024,
        description="CPUs one trial holds on the ray backend; a fraction shares a CPU.",
    )
    gpus: float = Field(
        default=0.0, ge=0, le=64,
        description="GPUs one trial holds (ray backend only); below 1 shares a GPU, above 1 "
                    "must be whole. The trial sees only the GPUs it holds.",
    )

    @field_validator("cpus", "gpus")
    @classmethod
    def _ray_quantity(cls, value: float, info: ValidationInfo) -> float:
        # Ray counts resources in steps of 0.0001 and gives a trial a share of one GPU or
        # whole GPUs, never 1.5.
        if 0 < value < 0.0001:
            raise ValueError(f"is {value}, but Ray counts resources in steps of 0.0001")
        if info.field_name == "gpus" and value > 1 and not value.is_integer():
            raise ValueError(f"is {value}, but above 1 it must be a whole number of GPUs")
        return value


class JobSpec(_Spec):
    """A whole search: what to train, over which space, for which objectives, how, how long."""

    name: str = Field(pattern=NAME)
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    objectives: list[ObjectiveSpec] = Field(
        default_factory=lambda: [ObjectiveSpec(name="accuracy")], min_length=1, max_length=8
    )
    constraints: list[ConstraintSpec] = Field(default_factory=list, max_length=32)
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    resources: TrialResources = Field(default_factory=TrialResources)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    mode: Literal["managed", "ask-tell"] = Field(
        default="managed",
        description="managed: workers run `trainer` on each trial. ask-tell: clients ask for "
                    "parameters, train anywhere and tell results through the API; of `trainer` "
                    "only `epochs` counts (the most steps a client reports, for sha/hyperband).",
    )

    @field_validator("objectives")
    @classmethod
    def _unique_objectives(cls, objectives: list[ObjectiveSpec]) -> list[ObjectiveSpec]:
        if repeated := _repeated(o.key for o in objectives):
            raise ValueError(f"each objective must appear once; repeated: {', '.join(repeated)}")
        return objectives

    @model_validator(mode="after")
    def _measured_or_predicted(self) -> JobSpec:
        # Measured and predicted latency of one device are never mixed in one job.
        measured = {c.device for c in self.constraints if c.metric == "latency_ms" and c.device}
        if both := sorted(measured & set(self.predicted_devices)):
            raise ValueError(f"latency on {', '.join(both)} is predicted by an objective but "
                             "measured by a constraint; use one or the other")
        return self

    @property
    def directions(self) -> list[Direction]:
        return [o.direction or METRICS[o.name] for o in self.objectives]

    @property
    def metric_names(self) -> list[str]:
        return [o.key for o in self.objectives]

    def objective_key(self, name: str, *, field: str = "values") -> str:
        """The key of the objective `name` stands for: an objective's key as it is
        (`latency_ms@local`), or a metric's plain name (`latency_ms`) when one objective
        measures it, which is how a user thinks of it.

        Raises `InvalidSpecError` (at `field`) for a name that is no objective's, and for a
        plain name that several objectives share (latency on two devices), naming the keys
        to choose from.
        """
        candidates = self._objective_keys(name)
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise InvalidSpecError(
                field,
                f"{name!r} is ambiguous: {len(candidates)} objectives measure it; name one of "
                f"{', '.join(candidates)}",
            )
        raise InvalidSpecError(
            field,
            f"{name!r} is not an objective of the job; its objectives: "
            f"{', '.join(self.metric_names)}",
        )

    def objective_values(
        self, values: Mapping[str, float], *, every: bool = True, field: str = "values"
    ) -> dict[str, float]:
        """`values` by objective key (names resolved by `objective_key`), in the objectives'
        order.

        Raises `InvalidSpecError` (at `field`) for an ambiguous name, and otherwise names at
        once what is missing (when `every` objective needs a value), what is no objective,
        and an objective given twice (by its key and by its plain name).
        """
        keys = self.metric_names
        given: dict[str, list[str]] = {}
        unknown: list[str] = []
        for name in values:
            candidates = self._objective_keys(name)
            if len(candidates) > 1:
                self.objective_key(name, field=field)  # raises, naming the candidates
            if candidates:
                given.setdefault(candidates[0], []).append(name)
            else:
                unknown.append(name)
        missing = [k for k in keys if k not in given] if every else []
        twice = [" and ".join(names) for names in given.values() if len(names) > 1]
        if missing or unknown or twice:
            raise InvalidSpecError(
                field,
                f"give one value per objective ({', '.join(keys)}; a metric's plain name "
                "will do where one objective measures it)"
                + (f"; missing: {', '.join(missing)}" if missing else "")
                + (f"; not an objective: {', '.join(sorted(unknown))}" if unknown else "")
                + (f"; given twice: {', '.join(twice)}" if twice else ""),
            )
        return {k: values[given[k][0]] for k in keys if k in given}

    def _objective_keys(self, name: str) -> list[str]:
        """The objective keys `name` may stand for: itself if it is one, else those of the
        objectives that measure the metric `name`."""
        if name in self.metric_names:
            return [name]
        return [o.key for o in self.objectives if o.name == name]

    @property
    def predicted_devices(self) -> list[str]:
        """Devices whose latency this job predicts instead of measuring."""
        return [o.device for o in self.objectives if o.mode == "predicted" and o.device]

    @property
    def devices(self) -> list[str]:
        """Every device whose latency this job needs, in order of first mention."""
        named = [o.device for o in self.objectives] + [c.device for c in self.constraints]
        return list(dict.fromkeys(d for d in named if d is not None))
