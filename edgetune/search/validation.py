"""Checks a JobSpec against what is installed and registered, before it is queued."""

from __future__ import annotations

import importlib.util
from collections.abc import Collection

from edgetune.errors import InvalidSpecError
from edgetune.search.one_shot import check_one_shot
from edgetune.search.registry import OPTIONS, PRUNERS, SAMPLERS, pbt_mutable, progress_metric
from edgetune.search.samplers import InfiniteGridError
from edgetune.spaces import Param, resolve_space
from edgetune.spec import LOCAL_DEVICE, JobSpec
from edgetune.trainers import Trainer, get_trainer_class


def validate_job_spec(spec: JobSpec, *, devices: Collection[str] = (LOCAL_DEVICE,)) -> None:
    """Raise `InvalidSpecError` (field, rule) for a spec that pydantic accepts but cannot run.
    `devices`: the names of the devices the job may measure on (`local` and those registered)."""
    if spec.mode == "ask-tell":
        _check_ask_tell(spec)
        return
    trainer_cls = get_trainer_class(spec.trainer.name)
    trainer_cls.validate_spec(spec.trainer)

    params = resolve_space(spec.space.name, spec.space.params)
    known = getattr(trainer_cls, "params", None)
    if known is not None:
        for i, p in enumerate(spec.space.params):
            if p.name not in known:
                raise InvalidSpecError(
                    f"space.params.{i}.name",
                    f"{trainer_cls.name} has no parameter {p.name!r}; "
                    f"it reads: {', '.join(sorted(known))}",
                )
        user = {p.name for p in spec.space.params}
        foreign = [p.name for p in params if p.name not in known and p.name not in user]
        if foreign:
            raise InvalidSpecError(
                "space.name",
                f"space {spec.space.name!r} has parameters {trainer_cls.name} does not read "
                f"({', '.join(foreign)}); pick a space made for it",
            )
    if not params:
        raise InvalidSpecError("space", "the space has no parameters to search")
    trainer_cls.validate_space(params)
    trainer_cls.validate_job(spec, params)
    _check_sampler(spec, params)
    _check_pruner(spec, params, trainer_cls)
    _check_options(spec)
    _check_resources(spec)
    check_one_shot(spec)

    named = [(f"objectives.{i}.device", o.device) for i, o in enumerate(spec.objectives)]
    named += [(f"constraints.{i}.device", c.device) for i, c in enumerate(spec.constraints)]
    for field, device in named:
        if device is not None and device not in devices:
            raise InvalidSpecError(
                field,
                f"unknown device {device!r}; registered devices: {', '.join(sorted(devices))}",
            )


def _check_sampler(spec: JobSpec, params: list[Param]) -> None:
    algorithm = spec.algorithm
    sampler = SAMPLERS.get(algorithm.sampler)
    if sampler is None:
        raise InvalidSpecError(
            "algorithm.sampler",
            f"unknown sampler {algorithm.sampler!r}; known samplers: {', '.join(SAMPLERS)}",
        )
    n = len(spec.objectives)
    if n > 1 and not sampler.multi_objective:
        fits = [name for name, e in SAMPLERS.items() if e.multi_objective]
        raise InvalidSpecError(
            "algorithm.sampler",
            f"{algorithm.sampler!r} optimizes one objective, but the job has {n}; samplers "
            f"for several: {', '.join(fits)}",
        )
    if n == 1 and not sampler.single_objective:
        fits = [name for name, e in SAMPLERS.items() if e.single_objective]
        raise InvalidSpecError(
            "algorithm.sampler",
            f"{algorithm.sampler!r} is made for several objectives, but the job has one; "
            f"samplers for one: {', '.join(fits)}",
        )
    if algorithm.backend not in sampler.backends:
        raise InvalidSpecError(
            "algorithm.sampler",
            f"{algorithm.sampler!r} does not run on the {algorithm.backend!r} backend; "
            f"it runs on: {', '.join(sampler.backends)}",
        )
    if spec.constraints and not sampler.constraints:
        fits = [name for name, e in SAMPLERS.items() if e.constraints]
        raise InvalidSpecError(
            "algorithm.sampler",
            f"{algorithm.sampler!r} cannot steer by constraints; samplers that can: "
            f"{', '.join(fits)}",
        )
    if sampler.max_trials is not None:
        try:
            sampler.max_trials(params)
        except InfiniteGridError as e:
            raise InvalidSpecError("space.params", f"{algorithm.sampler}: {e}") from e


def _check_ask_tell(spec: JobSpec) -> None:
    """Clients run the trials: no trainer, no devices of ours; they report every objective."""
    if spec.algorithm.backend != "optuna":
        raise InvalidSpecError("algorithm.backend",
                               "ask-tell jobs run on the optuna backend: clients run the trials")
    if spec.algorithm.one_shot is not None:
        raise InvalidSpecError("algorithm.one_shot", "ask-tell jobs have no supernet: clients "
                               "train every trial")
    if spec.constraints:
        raise InvalidSpecError("constraints", "ask-tell jobs take no constraints yet: tell "
                               "an infeasible trial failed, or make the limit an objective")
    params = resolve_space(spec.space.name, spec.space.params)
    if not params:
        raise InvalidSpecError("space", "the space has no parameters to search")
    _check_sampler(spec, params)
    _check_pruner(spec, params, None)
    _check_options(spec)
    _check_resources(spec)


def _check_pruner(
    spec: JobSpec, params: list[Param], trainer_cls: type[Trainer] | None
) -> None:
    """`trainer_cls` None: an ask/tell job, whose clients report every objective."""
    algorithm = spec.algorithm
    pruner = PRUNERS.get(algorithm.pruner)
    if pruner is None:
        raise InvalidSpecError(
            "algorithm.pruner",
            f"unknown pruner {algorithm.pruner!r}; known pruners and schedulers: "
            f"{', '.join(PRUNERS)}",
        )
    backend = algorithm.backend
    if backend not in pruner.backends:
        here = [name for name, e in PRUNERS.items() if backend in e.backends]
        raise InvalidSpecError(
            "algorithm.pruner",
            f"{algorithm.pruner!r} runs on the {' and '.join(pruner.backends)} backend, not "
            f"on {backend!r} (set algorithm.backend); on {backend!r}: {', '.join(here)}",
        )
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        raise InvalidSpecError(
            "algorithm.backend",
            "the ray backend needs Ray, which is not installed on the server; install it "
            "with `pip install 'edgetune[ray]'`, or use the optuna backend",
        )
    if algorithm.pruner == "none":
        return
    n = len(spec.objectives)
    if n > 1 and not pruner.multi_objective:
        fits = [name for name, e in PRUNERS.items()
                if e.multi_objective and name != "none" and backend in e.backends]
        raise InvalidSpecError(
            "algorithm.pruner",
            f"{algorithm.pruner!r} stops trials on one objective, but the job has {n}; "
            + (f"for several: {', '.join(fits)}" if fits else
               "mo-asha stops multi-objective trials on the optuna backend"),
        )
    if n == 1 and not pruner.single_objective:
        fits = [name for name, e in PRUNERS.items()
                if e.single_objective and name != "none" and backend in e.backends]
        raise InvalidSpecError(
            "algorithm.pruner",
            f"{algorithm.pruner!r} ranks several objectives, but the job has one; for one "
            f"on {backend!r}: {', '.join(fits)}",
        )
    if trainer_cls is None:
        return
    reported = trainer_cls.progress_metrics
    for i, o in enumerate(spec.objectives):
        if progress_metric(o.name, reported) is None:
            raise InvalidSpecError(
                f"objectives.{i}.name",
                f"{algorithm.pruner!r} compares trials during training, but "
                f"{trainer_cls.name} reports only {', '.join(reported)} before a trial ends, "
                f"not {o.name!r}",
            )
    if pruner.mutates and not pbt_mutable(spec, params):
        raise InvalidSpecError(
            "algorithm.pruner",
            f"{algorithm.pruner!r} changes training parameters during a trial, but the space "
            f"has none that {trainer_cls.name} can change without rebuilding the model "
            f"({', '.join(sorted(trainer_cls.mutable_params)) or 'none'})",
        )


def _check_options(spec: JobSpec) -> None:
    algorithm = spec.algorithm
    read = set(SAMPLERS[algorithm.sampler].options) | set(PRUNERS[algorithm.pruner].options)
    for key, value in algorithm.options.items():
        field = f"algorithm.options.{key}"
        if key not in read:
            raise InvalidSpecError(
                field,
                f"neither {algorithm.sampler!r} nor {algorithm.pruner!r} reads it; they read: "
                f"{', '.join(sorted(read)) or 'nothing'}",
            )
        if not OPTIONS[key].check(value):
            raise InvalidSpecError(field, f"is {value!r}, but must be {OPTIONS[key].rule}")


def _check_resources(spec: JobSpec) -> None:
    gpus = spec.resources.gpus
    backend = spec.algorithm.backend
    if backend == "optuna" and gpus > 0:
        raise InvalidSpecError(
            "resources.gpus",
            f"is {gpus:g}, but the optuna backend does not schedule GPUs (a trial uses what "
            "its trainer's `device` option picks); the ray backend schedules GPUs per trial: "
            "set algorithm.backend to 'ray'",
        )
    if backend == "ray" and gpus == 0 and spec.trainer.options.get("device") == "cuda":
        raise InvalidSpecError(
            "resources.gpus",
            "is 0, but trainer.options.device is 'cuda': a trial on the ray backend sees "
            "only the GPUs it holds; set resources.gpus (e.g. 1 or 0.5) or device 'auto'",
        )
