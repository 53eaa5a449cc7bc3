"""Checks a JobSpec against what is installed and registered, before it is queued."""

from __future__ import annotations

from edgetune.errors import InvalidSpecError
from edgetune.search.registry import PRUNERS, SAMPLERS
from edgetune.spaces import resolve_space
from edgetune.spec import LOCAL_DEVICE, JobSpec
from edgetune.trainers import get_trainer_class

KNOWN_DEVICES = (LOCAL_DEVICE,)


def validate_job_spec(spec: JobSpec) -> None:
    """Raise `InvalidSpecError` (field, rule) for a spec that pydantic accepts but cannot run."""
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

    algorithm = spec.algorithm
    sampler = SAMPLERS.get(algorithm.sampler)
    if sampler is None:
        raise InvalidSpecError(
            "algorithm.sampler",
            f"unknown sampler {algorithm.sampler!r}; known samplers: {', '.join(SAMPLERS)}",
        )
    multi = len(spec.objectives) > 1
    if multi and not sampler.multi_objective:
        fits = [n for n, e in SAMPLERS.items() if e.multi_objective]
        raise InvalidSpecError(
            "algorithm.sampler",
            f"{algorithm.sampler!r} optimizes one objective, but the job has "
            f"{len(spec.objectives)}; samplers for several: {', '.join(fits)}",
        )
    if algorithm.backend not in sampler.backends:
        raise InvalidSpecError(
            "algorithm.sampler",
            f"{algorithm.sampler!r} does not run on the {algorithm.backend!r} backend; "
            f"it runs on: {', '.join(sampler.backends)}",
        )
    if spec.constraints and not sampler.constraints:
        fits = [n for n, e in SAMPLERS.items() if e.constraints]
        raise InvalidSpecError(
            "algorithm.sampler",
            f"{algorithm.sampler!r} cannot steer by constraints; samplers that can: "
            f"{', '.join(fits)}",
        )

    pruner = PRUNERS.get(algorithm.pruner)
    if pruner is None:
        raise InvalidSpecError(
            "algorithm.pruner",
            f"unknown pruner {algorithm.pruner!r}; known pruners: {', '.join(PRUNERS)}",
        )
    if algorithm.pruner != "none":
        if multi and not pruner.multi_objective:
            fits = [n for n, e in PRUNERS.items() if e.multi_objective]
            raise InvalidSpecError(
                "algorithm.pruner",
                f"{algorithm.pruner!r} stops trials on one objective, but the job has "
                f"{len(spec.objectives)}; pruners for several: {', '.join(fits)}",
            )
        if not multi and spec.objectives[0].name != "accuracy":
            raise InvalidSpecError(
                "algorithm.pruner",
                f"{algorithm.pruner!r} compares validation accuracy during training, so the "
                f"objective must be accuracy, not {spec.objectives[0].name!r}",
            )
        if algorithm.backend not in pruner.backends:
            raise InvalidSpecError(
                "algorithm.pruner",
                f"{algorithm.pruner!r} does not run on the {algorithm.backend!r} backend; "
                f"it runs on: {', '.join(pruner.backends)}",
            )

    named = [(f"objectives.{i}.device", o.device) for i, o in enumerate(spec.objectives)]
    named += [(f"constraints.{i}.device", c.device) for i, c in enumerate(spec.constraints)]
    for field, device in named:
        if device is not None and device not in KNOWN_DEVICES:
            raise InvalidSpecError(
                field,
                f"unknown device {device!r}; registered devices: {', '.join(KNOWN_DEVICES)}",
            )
