"""One-shot NAS: train one weight-sharing supernet, search its subnets, train the front's picks.

A one-shot job (`algorithm.one_shot`) runs in two stages, both made of ordinary trials of its
study, so any worker, or a restarted one, goes on where the last stopped:

1. **evaluation**: the first `n_trials - finalists` trials are subnets the job's sampler
   proposes. Each is cut out of the supernet with its weights, its batch-norm statistics are
   recalibrated on training data, and its validation accuracy is measured: seconds, not a
   training run. Latency, size and FLOPs are measured on the exported subnet as for any trial.
   The supernet is trained by the first trial that needs it and kept in the data directory by
   content hash (`SupernetStore`), so a job on the same space, data and settings, for another
   device, reuses it and trains nothing.
2. **finalists**: once every evaluation has ended, the best evaluated subnets (the Pareto
   front, then the next ranks, crowding breaking ties) are trained as ordinary trials for
   `finetune_epochs` (default `trainer.epochs`), from the supernet's weights or from scratch.

Evaluations carry the user attribute `one_shot: eval` and stay out of the job's Pareto front
(their accuracy is inherited, not trained); finalists carry `one_shot: finetune`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgetune.errors import InvalidSpecError
from edgetune.search.constraints import total_violation
from edgetune.spaces import ParamValue, resolve_space
from edgetune.spec import METRICS, JobSpec
from edgetune.storage import study_store
from edgetune.storage.study_store import ONE_SHOT_ATTR

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from edgetune.settings import DataLayout
    from edgetune.trainers import FitResult, Trainer
    from edgetune.trainers.supernet import MobileNetSupernet, SupernetConfig

__all__ = ["ONE_SHOT_ATTR", "Planned", "Stage", "check_one_shot", "evaluate_subnet",
           "finalists", "plan_next", "start_from_supernet"]

#: The trainer and space a supernet is built for.
TRAINER = "image-classifier"
SPACE = "mobilenet"


class Stage(enum.Enum):
    """What a trial of a one-shot job does, stored as its `one_shot` user attribute."""

    EVAL = "eval"  # a subnet evaluated with the supernet's weights
    FINETUNE = "finetune"  # a finalist trained as an ordinary trial


@dataclass(frozen=True)
class Planned:
    """The next trial of a one-shot job: its stage and, for a finalist, its parameters."""

    stage: Stage
    params: dict[str, ParamValue] | None = None


def check_one_shot(spec: JobSpec) -> None:
    """Raise `InvalidSpecError` for a one-shot job that cannot run."""
    one = spec.algorithm.one_shot
    if one is None:
        return
    if spec.trainer.name != TRAINER:
        raise InvalidSpecError("algorithm.one_shot", f"needs the {TRAINER!r} trainer, whose "
                               f"networks the supernet shares; the job names "
                               f"{spec.trainer.name!r}")
    if spec.space.name != SPACE:
        raise InvalidSpecError("space.name", f"is {spec.space.name!r}, but a one-shot job "
                               f"searches the {SPACE!r} space (narrow it with space.params)")
    if spec.algorithm.pruner != "none":
        raise InvalidSpecError("algorithm.pruner", "a one-shot job evaluates subnets in "
                               "seconds and trains only its finalists: it takes no pruner")
    if spec.budget.n_trials <= one.finalists:
        raise InvalidSpecError(
            "budget.n_trials",
            f"is {spec.budget.n_trials}, but a one-shot job needs more trials than its "
            f"{one.finalists} finalists (algorithm.one_shot.finalists): the rest evaluate "
            "subnets",
        )
    for key in ("prune", "quantization", "distill_alpha"):
        if any(p.name == key for p in spec.space.params):
            raise InvalidSpecError("space.params", f"a one-shot job does not search "
                                   f"compression knobs yet ({key!r})")


# --- the job's plan ------------------------------------------------------------------------
def plan_next(spec: JobSpec, n_trials: int, trials: Sequence[FrozenTrial]) -> Planned | None:
    """The next trial to ask, from the study's trials; None while evaluations still run or
    when every finalist has been asked."""
    from optuna.trial import TrialState

    one = spec.algorithm.one_shot
    assert one is not None
    by_stage: dict[str, list[FrozenTrial]] = {s.value: [] for s in Stage}
    for t in trials:  # running ones, and ended ones that used budget, hold their stage's slot
        stage = t.user_attrs.get(ONE_SHOT_ATTR)
        if stage in by_stage and (t.state in (TrialState.RUNNING, TrialState.WAITING)
                                  or study_store.uses_budget(t)):
            by_stage[stage].append(t)
    evaluations = by_stage[Stage.EVAL.value]
    if len(evaluations) < n_trials - one.finalists:
        return Planned(Stage.EVAL)
    if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in evaluations):
        return None
    taken = [t.params for t in by_stage[Stage.FINETUNE.value]]
    picks = finalists(spec, [t for t in evaluations if t.state == TrialState.COMPLETE],
                      one.finalists)
    return next((Planned(Stage.FINETUNE, p) for p in picks if p not in taken), None)


def finalists(
    spec: JobSpec, evaluated: Sequence[FrozenTrial], k: int
) -> list[dict[str, ParamValue]]:
    """The parameters of the best `k` evaluated subnets: feasible first, then by non-dominated
    rank, then the least crowded; distinct parameter sets only."""
    import numpy as np

    from edgetune.search.pareto import constrained_rank, crowding_distance

    if not evaluated:
        return []
    signs = np.array([-1.0 if (o.direction or METRICS[o.name]) == "maximize" else 1.0
                      for o in spec.objectives])
    values = np.array([t.values for t in evaluated], dtype=np.float64) * signs
    violation = (np.array([total_violation(spec.constraints, t.user_attrs) for t in evaluated])
                 if spec.constraints else None)
    ranks = constrained_rank(values, violation)
    crowding = np.zeros(len(evaluated))
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        crowding[members] = crowding_distance(values[members])
    order = sorted(range(len(evaluated)),
                   key=lambda i: (int(ranks[i]), -float(crowding[i]), evaluated[i].number))
    picks: list[dict[str, ParamValue]] = []
    for i in order:
        params = dict(evaluated[i].params)
        if params not in picks:
            picks.append(params)
        if len(picks) == k:
            break
    return picks


# --- in the trial's process ------------------------------------------------------------------
def supernet_config(spec: JobSpec) -> SupernetConfig:
    from edgetune.trainers.supernet import SupernetConfig

    one = spec.algorithm.one_shot
    assert one is not None
    return SupernetConfig(
        epochs=one.supernet_epochs, n_random=one.random_subnets, distill=one.distill,
        batch_size=spec.trainer.batch_size,
        seed=spec.trainer.seed if spec.trainer.seed is not None else (spec.seed or 0),
    )


def load_supernet(spec: JobSpec, data: Any, layout: DataLayout) -> MobileNetSupernet:
    """The job's trained supernet: from the data directory's store, or trained now (once, by
    the first process that asks; the others wait for it)."""
    from edgetune.trainers.supernet import SupernetStore, supernet_key, train_supernet

    space = resolve_space(spec.space.name, spec.space.params)
    config = supernet_config(spec)
    options = {k: v for k, v in spec.trainer.options.items() if k not in ("threads", "device")}
    key = supernet_key(space, dataset=spec.trainer.dataset, dataset_options=options,
                       config=config, in_channels=data.input_shape[0], n_classes=data.n_classes)
    threads = int(spec.trainer.options.get("threads") or 1)
    supernet, _ = SupernetStore(layout.supernets).load_or_train(
        key, space, lambda: train_supernet(space, data, config, threads=threads))
    return supernet


def evaluate_subnet(
    spec: JobSpec, trainer: Trainer, params: Mapping[str, ParamValue], layout: DataLayout
) -> FitResult:
    """A subnet of the supernet with inherited weights and recalibrated batch norm, and its
    validation accuracy: what an evaluation trial exports and measures."""
    import torch

    from edgetune.trainers import FitResult
    from edgetune.trainers._classifier import CALIBRATION_SAMPLES, ClassifierTrainer
    from edgetune.trainers.supernet import evaluate, subnet

    if not isinstance(trainer, ClassifierTrainer):
        raise TypeError(f"a one-shot job needs the {TRAINER!r} trainer")
    torch.set_num_threads(int(spec.trainer.options.get("threads") or 1))
    data = trainer.split()
    model = subnet(load_supernet(spec, data, layout), params, data).eval()
    return FitResult(
        model=model, example_input=torch.zeros((1, *data.x_train.shape[1:])),
        metrics={"accuracy": evaluate(model, data.x_val, data.y_val)},
        calibration=data.x_train[: min(len(data.x_train), CALIBRATION_SAMPLES)],
    )


def finalist_epochs(spec: JobSpec) -> int:
    one = spec.algorithm.one_shot
    if one is None or one.finetune_epochs is None:
        return spec.trainer.epochs
    return one.finetune_epochs


def start_from_supernet(spec: JobSpec, trainer: Trainer, layout: DataLayout) -> None:
    """Make a finalist train from its subnet with the supernet's weights (batch norm
    recalibrated) in place of a freshly initialised network; from scratch when the job says
    `finetune: scratch`."""
    from edgetune.trainers._classifier import ClassifierTrainer
    from edgetune.trainers.supernet import subnet

    one = spec.algorithm.one_shot
    if one is None or one.finetune != "inherit" or not isinstance(trainer, ClassifierTrainer):
        return

    def start(params: Mapping[str, ParamValue], data: Any) -> Any:
        return subnet(load_supernet(spec, data, layout), params, data)

    trainer.warm_start = start
