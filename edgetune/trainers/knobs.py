"""Compression knobs: the parameters every classifier reads to prune, quantize and distill.

Each knob is an ordinary search parameter, so a job can search it (a categorical over
quantization modes) or fix it (a fixed parameter). Pure Python: the API checks them at
submission without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgetune.errors import InvalidSpecError
from edgetune.spaces import CategoricalParam, FixedParam, FloatParam, IntParam, Param, ParamValue

PRUNING = ("none", "magnitude", "channel")
PRUNE_CRITERIA = ("l1", "bn")
#: "qat" quantizes the exported file like "int8-static"; what differs is the fine-tuning
#: with fake quantization before export.
QUANTIZATION = ("fp32", "fp16", "int8-dynamic", "int8-static", "qat")

#: Knob -> (what it means, the rule its values meet).
KNOBS: dict[str, str] = {
    "prune": f"pruning method, one of {', '.join(PRUNING)} (default none)",
    "prune_amount": "share of weights (magnitude) or hidden channels (channel) removed, "
                    "in [0, 0.95] (default 0.5)",
    "prune_criterion": f"channel ranking, one of {', '.join(PRUNE_CRITERIA)} (default l1)",
    "slimming_l1": "weight of the L1 penalty on batch-norm scales while training with "
                   "prune_criterion bn, in [0, 0.01] (default 1e-4)",
    "finetune_epochs": "epochs of fine-tuning after pruning and of QAT, in [1, 100] (default 1)",
    "quantization": f"exported precision, one of {', '.join(QUANTIZATION)} (default fp32)",
    "distill_alpha": "weight of the teacher's soft-target loss, in [0, 1]; 0 = no "
                     "distillation (default 0)",
    "distill_temperature": "softmax temperature of the soft targets, in [1, 20] (default 4)",
}
_CHOICES = {"prune": PRUNING, "prune_criterion": PRUNE_CRITERIA, "quantization": QUANTIZATION}
_RANGES: dict[str, tuple[float, float]] = {
    "prune_amount": (0.0, 0.95), "slimming_l1": (0.0, 0.01), "finetune_epochs": (1, 100),
    "distill_alpha": (0.0, 1.0), "distill_temperature": (1.0, 20.0),
}


@dataclass(frozen=True)
class Compression:
    """The knobs of one trial, with their defaults filled in."""

    prune: str = "none"
    prune_amount: float = 0.5
    prune_criterion: str = "l1"
    slimming_l1: float = 1e-4
    finetune_epochs: int = 1
    quantization: str = "fp32"
    distill_alpha: float = 0.0
    distill_temperature: float = 4.0

    @classmethod
    def from_params(cls, params: Mapping[str, ParamValue]) -> Compression:
        d = cls()
        return cls(
            prune=str(params.get("prune", d.prune)),
            prune_amount=float(params.get("prune_amount", d.prune_amount)),
            prune_criterion=str(params.get("prune_criterion", d.prune_criterion)),
            slimming_l1=float(params.get("slimming_l1", d.slimming_l1)),
            finetune_epochs=int(params.get("finetune_epochs", d.finetune_epochs)),
            quantization=str(params.get("quantization", d.quantization)),
            distill_alpha=float(params.get("distill_alpha", d.distill_alpha)),
            distill_temperature=float(params.get("distill_temperature", d.distill_temperature)),
        )

    def describe(self) -> dict[str, Any]:
        """What was applied, for the trial's record; knobs that did nothing are left out."""
        out: dict[str, Any] = {"quantization": self.quantization, "prune": self.prune}
        if self.prune != "none":
            out.update(prune_amount=self.prune_amount, finetune_epochs=self.finetune_epochs)
        if self.prune == "channel":
            out["prune_criterion"] = self.prune_criterion
        if self.distill_alpha > 0:
            out.update(distill_alpha=self.distill_alpha,
                       distill_temperature=self.distill_temperature)
        return out


def check_knobs(
    params: Sequence[Param], trainer: str,
    allowed: Mapping[str, Sequence[ParamValue]] | None = None,
) -> None:
    """Raise `InvalidSpecError` for a parameter that can be sampled at a value its rule refuses.

    The rules are the knobs' own, and `allowed`: parameter -> the only values `trainer` takes
    (the architectures it builds, say).
    """
    allowed = allowed or {}
    for p in params:
        rule, only = KNOBS.get(p.name), allowed.get(p.name)
        if rule is None and only is None:
            continue
        for value in _extremes(p):
            if rule is not None and not _fits(p.name, value):
                raise InvalidSpecError("space.params", f"{p.name} can be {value!r}, but is the "
                                                       f"{rule}")
            if only is not None and value not in only:
                raise InvalidSpecError(
                    "space.params", f"{p.name} can be {value!r}, but {trainer} takes only "
                                    f"{', '.join(map(str, only))}"
                )


def _extremes(p: Param) -> list[ParamValue]:
    """Every value `p` can take, or for a range its ends (the rules here are ranges or sets)."""
    if isinstance(p, CategoricalParam):
        return list(p.choices)
    if isinstance(p, FixedParam):
        return [p.value]
    if isinstance(p, FloatParam | IntParam):
        return [p.low, p.high]
    raise TypeError(type(p).__name__)  # pragma: no cover - the Param union is closed


def _fits(name: str, value: ParamValue) -> bool:
    if name in _CHOICES:
        return value in _CHOICES[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    low, high = _RANGES[name]
    if name == "finetune_epochs" and not float(value).is_integer():
        return False
    return low <= value <= high
