"""The `tabular-classifier` trainer: an MLP from the `mlp` space, trained on feature tables."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from edgetune.errors import InvalidSpecError
from edgetune.spaces import ParamValue
from edgetune.trainers._classifier import COMMON_OPTIONS, ClassifierTrainer, int_in
from edgetune.trainers.datasets import TABULAR_DATASETS, TabularData, load_tabular_dataset

if TYPE_CHECKING:
    import torch

    from edgetune.spec import TrainerSpec

_OPTIONS = {
    **COMMON_OPTIONS,
    "n_samples": "rows of the synthetic dataset, 50..1000000 (default 2000)",
    "n_features": "features of the synthetic dataset, 1..10000 (default 20)",
    "n_classes": "classes of the synthetic dataset, 2..1000 (default 3)",
}
#: Option -> (low, high, default) for the integer options that size the `synthetic` dataset.
_SYNTHETIC_SIZES = {
    "n_samples": (50, 1_000_000, 2000),
    "n_features": (1, 10_000, 20),
    "n_classes": (2, 1000, 3),
}
#: float32 cells of the synthetic table; the ranges alone would allow 40 GB.
_MAX_SYNTHETIC_CELLS = 100_000_000
_ACTIVATIONS = ("relu", "gelu", "tanh")


def build_mlp(
    n_features: int, n_classes: int, n_layers: int, width: int, activation: str,
    dropout: float = 0.0,
) -> torch.nn.Sequential:
    """The `mlp` space's network; see `edgetune.spaces.BUILTIN_SPACES['mlp']`."""
    from torch import nn

    kinds: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
    if activation not in kinds:
        raise ValueError(
            f"The value of `activation` is {activation!r}, but must be one of "
            f"{', '.join(repr(a) for a in _ACTIVATIONS)}."
        )
    if n_layers < 1 or width < 1:
        raise ValueError(
            f"The values of `n_layers` and `width` are {n_layers} and {width}, but must be >= 1."
        )
    layers: list[nn.Module] = []
    size = n_features
    for _ in range(n_layers):
        layers += [nn.Linear(size, width), kinds[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        size = width
    layers.append(nn.Linear(size, n_classes))
    return nn.Sequential(*layers)


class TabularClassifier(ClassifierTrainer):
    """Trains an MLP with Adam and cross-entropy; reports validation accuracy every epoch.

    Parameters it reads (defaults when absent): n_layers (2), width (64), activation (relu),
    dropout (0), lr (0.01), weight_decay (0).
    """

    name: ClassVar[str] = "tabular-classifier"
    datasets: ClassVar[tuple[str, ...]] = TABULAR_DATASETS
    params: ClassVar[frozenset[str]] = frozenset(
        {"n_layers", "width", "activation", "dropout", "lr", "weight_decay"}
    )
    options: ClassVar[dict[str, str]] = _OPTIONS

    @classmethod
    def validate_spec(cls, spec: TrainerSpec) -> None:
        super().validate_spec(spec)
        if spec.dataset == "synthetic":
            _check_synthetic_sizes(spec.options)

    @classmethod
    def check_option(cls, spec: TrainerSpec, key: str, value: object) -> None:
        super().check_option(spec, key, value)
        if key in _SYNTHETIC_SIZES:
            low, high, _ = _SYNTHETIC_SIZES[key]
            if not int_in(value, low, high):
                raise InvalidSpecError(
                    f"trainer.options.{key}",
                    f"is {value!r}, but must be an integer in [{low}, {high}]",
                )
            if spec.dataset != "synthetic":
                # Accepting it silently would let a user believe it changed something.
                raise InvalidSpecError(
                    f"trainer.options.{key}",
                    f"only applies to the dataset 'synthetic', not {spec.dataset!r}",
                )

    def load_data(self, *, val_fraction: float, seed: int) -> TabularData:
        n_samples, n_features, n_classes = _synthetic_sizes(self.spec.options)
        return load_tabular_dataset(
            self.spec.dataset, val_fraction=val_fraction, seed=seed,
            n_samples=n_samples, n_features=n_features, n_classes=n_classes,
        )

    def build_model(
        self, params: Mapping[str, ParamValue], data: TabularData
    ) -> torch.nn.Module:
        return build_mlp(
            n_features=data.n_features,
            n_classes=data.n_classes,
            n_layers=int(params.get("n_layers", 2)),
            width=int(params.get("width", 64)),
            activation=str(params.get("activation", "relu")),
            dropout=float(params.get("dropout", 0.0)),
        )


def _synthetic_sizes(options: Mapping[str, object]) -> tuple[int, int, int]:
    """(n_samples, n_features, n_classes) from the options, with the defaults filled in."""
    n_samples, n_features, n_classes = (
        int(value) if isinstance(value := options.get(key), int) else default
        for key, (_, _, default) in _SYNTHETIC_SIZES.items()
    )
    return n_samples, n_features, n_classes


def _check_synthetic_sizes(options: Mapping[str, object]) -> None:
    # The single options are in range already; these are the rules between them.
    n_samples, n_features, n_classes = _synthetic_sizes(options)
    needed = max(1, math.ceil(math.log2(n_classes)))
    if n_features < needed:
        raise InvalidSpecError(
            "trainer.options.n_features",
            f"is {n_features}, but {n_classes} classes need at least {needed} features",
        )
    if n_samples * n_features > _MAX_SYNTHETIC_CELLS:
        raise InvalidSpecError(
            "trainer.options.n_samples",
            f"n_samples x n_features is {n_samples * n_features}, but must be <= "
            f"{_MAX_SYNTHETIC_CELLS}",
        )
    val_fraction = options.get("val_fraction")
    fraction = float(val_fraction) if isinstance(val_fraction, int | float) else 0.2
    n_val = math.ceil(fraction * n_samples)
    if min(n_val, n_samples - n_val) < n_classes:
        raise InvalidSpecError(
            "trainer.options.n_samples",
            f"is {n_samples}, but a stratified split needs at least {n_classes} samples "
            f"(n_classes) in both training and validation sets; it gives {n_val} to validation",
        )
