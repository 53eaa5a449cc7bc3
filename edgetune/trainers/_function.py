"""The `function` trainer: classic test problems with known optima, to check a search's settings
(sampler, pruner, backend, budget) in seconds instead of hours of training.

The job's `trainer.dataset` names the problem and the space's parameters `x0`, `x1`, ... are its
variables. `epochs` simulates a learning curve: at epoch e of E every objective is reported as
its true value plus a bias that shrinks to zero at E and depends on x, so that early values rank
candidates roughly, but not perfectly, the way final ones do (what makes early stopping a bet).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgetune.errors import InvalidSpecError
from edgetune.spaces import CategoricalParam, FloatParam, IntParam, Param, ParamValue
from edgetune.trainers._base import FitResult, Report, Trainer

if TYPE_CHECKING:
    from edgetune.spec import JobSpec, TrainerSpec

VARIABLE = re.compile(r"x(0|[1-9][0-9]*)")
STATE_FILE = "function-state.json"


def sphere(x: Sequence[float]) -> list[float]:
    """One objective, minimum 0 at x = 0.5 everywhere."""
    return [sum((v - 0.5) ** 2 for v in x)]


def zdt1(x: Sequence[float]) -> list[float]:
    """ZDT1 (Zitzler, Deb, Thiele 2000): two objectives, convex front f2 = 1 - sqrt(f1) where
    x1.. are 0. With reference point (1.1, 1.1) the front's hypervolume is 0.87667."""
    g = 1 + 9 * sum(x[1:]) / (len(x) - 1)
    return [x[0], g * (1 - math.sqrt(x[0] / g))]


def dtlz2(x: Sequence[float]) -> list[float]:
    """DTLZ2 (Deb et al. 2002) with three objectives: the front is the unit sphere's positive
    octant, where x2.. are 0.5; with reference (1.1, 1.1, 1.1) its hypervolume is 1.331 - pi/6."""
    g = sum((v - 0.5) ** 2 for v in x[2:])
    a, b = x[0] * math.pi / 2, x[1] * math.pi / 2
    return [(1 + g) * math.cos(a) * math.cos(b), (1 + g) * math.cos(a) * math.sin(b),
            (1 + g) * math.sin(a)]


#: Problem -> (function, number of objectives, fewest variables, whether x must lie in [0, 1]).
PROBLEMS: dict[str, tuple[Callable[[Sequence[float]], list[float]], int, int, bool]] = {
    "sphere": (sphere, 1, 1, False),
    "zdt1": (zdt1, 2, 2, True),
    "dtlz2": (dtlz2, 3, 3, True),
}


class FunctionTrainer(Trainer):
    """Evaluates a test problem at the sampled x; reports it every epoch (see the module)."""

    name = "function"
    datasets = tuple(PROBLEMS)
    metrics = ("f1", "f2", "f3")
    progress_metrics = ("f1", "f2", "f3")
    @classmethod
    def is_mutable(cls, name: str) -> bool:
        return True  # nothing is trained, so every variable may change between epochs

    @classmethod
    def validate_spec(cls, spec: TrainerSpec) -> None:
        if spec.dataset not in PROBLEMS:
            raise InvalidSpecError(
                "trainer.dataset",
                f"{spec.dataset!r} is not a problem of the function trainer; known: "
                f"{', '.join(PROBLEMS)}",
            )
        if spec.options:
            raise InvalidSpecError(
                f"trainer.options.{next(iter(spec.options))}",
                "the function trainer takes no options",
            )

    @classmethod
    def validate_space(cls, params: Sequence[Param]) -> None:
        indices = []
        for p in params:
            if not VARIABLE.fullmatch(p.name):
                raise InvalidSpecError(
                    "space.params", f"the function trainer reads x0, x1, ...; not {p.name!r}"
                )
            values: list[ParamValue] = (
                [p.low, p.high] if isinstance(p, FloatParam | IntParam) else _values(p)
            )
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                raise InvalidSpecError("space.params", f"{p.name} must take numbers")
            indices.append(int(p.name[1:]))
        if sorted(indices) != list(range(len(indices))):
            raise InvalidSpecError(
                "space.params", "the variables must be x0, x1, ... without gaps"
            )

    @classmethod
    def validate_job(cls, spec: JobSpec, params: Sequence[Param]) -> None:
        super().validate_job(spec, params)
        problem = spec.trainer.dataset
        _, m, fewest, unit = PROBLEMS[problem]
        if len(params) < fewest:
            raise InvalidSpecError(
                "space.params", f"{problem} needs at least {fewest} variables, got {len(params)}"
            )
        for i, o in enumerate(spec.objectives):
            if int(o.name[1:]) > m:
                raise InvalidSpecError(
                    f"objectives.{i}.name", f"{problem} has {m} objectives: f1..f{m}"
                )
        if unit:
            for p in params:
                low, high = _bounds(p)
                if low < 0 or high > 1:
                    raise InvalidSpecError(
                        "space.params", f"{problem} is defined on [0, 1]; {p.name} goes "
                                        f"from {low} to {high}"
                    )

    def fit(
        self, params: Mapping[str, ParamValue], *, report: Report,
        checkpoint_dir: Path | None = None,
    ) -> FitResult:
        function, m, _, _ = PROBLEMS[self.spec.dataset]
        x = [float(params[f"x{i}"]) for i in range(len(params))]
        values = function(x)
        epochs = self.spec.epochs
        first = _restore(checkpoint_dir) + 1
        for epoch in range(first, epochs + 1):
            # A bias in [0, 1] per objective, from x; gone at the last epoch.
            share = 1 - epoch / epochs
            early = {f"f{k + 1}": v + share * 0.5 * (1 + math.sin(7 * sum(x) + k))
                     for k, v in enumerate(values)}
            if checkpoint_dir is not None:
                _save(checkpoint_dir, epoch)
            report(epoch, early)
        return FitResult(model=None, metrics={f"f{k + 1}": v for k, v in enumerate(values[:m])})


def _bounds(p: Param) -> tuple[float, float]:
    if isinstance(p, FloatParam | IntParam):
        return float(p.low), float(p.high)
    values = [float(v) for v in _values(p)]
    return min(values), max(values)


def _values(p: Param) -> list[ParamValue]:
    return list(p.choices) if isinstance(p, CategoricalParam) else [p.value]  # type: ignore[union-attr]


def _save(directory: Path, epoch: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({"epoch": epoch}))
    tmp.replace(directory / STATE_FILE)


def _restore(directory: Path | None) -> int:
    if directory is None or not (directory / STATE_FILE).exists():
        return 0
    return int(json.loads((directory / STATE_FILE).read_text())["epoch"])
