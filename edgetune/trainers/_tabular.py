"""The `tabular-classifier` trainer: an MLP from the `mlp` space, trained on feature tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

from edgetune.spaces import BUILTIN_SPACES, ParamValue
from edgetune.trainers._classifier import (
    COMMON_OPTIONS,
    COMMON_PARAMS,
    ClassifierTrainer,
)
from edgetune.trainers.datasets import (
    DATASET_OPTIONS,
    TABULAR_DATASETS,
    TabularData,
    load_tabular_dataset,
)

if TYPE_CHECKING:
    import torch


_ACTIVATIONS = ("relu", "gelu", "tanh")


def build_mlp(
    n_features: int, n_classes: int, n_layers: int, width: int | Sequence[int], activation: str,
    dropout: float = 0.0,
) -> torch.nn.Sequential:
    """The `mlp` space's network; see `edgetune.spaces.BUILTIN_SPACES['mlp']`.

    `width` is every hidden layer's width, or one width per layer.
    """
    from torch import nn

    kinds: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
    if activation not in kinds:
        raise ValueError(
            f"The value of `activation` is {activation!r}, but must be one of "
            f"{', '.join(repr(a) for a in _ACTIVATIONS)}."
        )
    widths = [width] * n_layers if isinstance(width, int) else list(width)
    if n_layers < 1 or len(widths) != n_layers or min(widths) < 1:
        raise ValueError(
            f"The values of `n_layers` and `width` are {n_layers} and {width}, but must be >= 1 "
            "(one width, or one per layer)."
        )
    layers: list[nn.Module] = []
    size = n_features
    for units in widths:
        layers += [nn.Linear(size, units), kinds[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        size = units
    layers.append(nn.Linear(size, n_classes))
    return nn.Sequential(*layers)


class TabularClassifier(ClassifierTrainer):
    """Trains an MLP with Adam and cross-entropy; reports validation accuracy every epoch.

    Parameters it reads (defaults when absent): n_layers (2), width_1..width_4 (each defaults
    to `width`, itself 64), activation (relu),
    dropout (0), lr (0.01), weight_decay (0), and the compression knobs of
    `edgetune.trainers.knobs` (channel pruning needs a model with prunable blocks, so on an
    MLP only magnitude pruning applies).
    """

    name: ClassVar[str] = "tabular-classifier"
    datasets: ClassVar[tuple[str, ...]] = TABULAR_DATASETS
    params: ClassVar[frozenset[str]] = frozenset(
        {"width", "dropout", *COMMON_PARAMS, *(p.name for p in BUILTIN_SPACES["mlp"].params)}
    )
    options: ClassVar[dict[str, str]] = {**COMMON_OPTIONS, **DATASET_OPTIONS}
    # An MLP has no channels to prune.
    allowed_values: ClassVar[dict[str, tuple[ParamValue, ...]]] = {
        "arch": ("mlp",), "prune": ("none", "magnitude")
    }

    def load_data(self, *, val_fraction: float, seed: int) -> TabularData:
        return load_tabular_dataset(
            self.spec.dataset, val_fraction=val_fraction, seed=seed,
            data_dir=self.data_dir, options=self.spec.options,
        )

    def build_model(
        self, params: Mapping[str, ParamValue], data: TabularData
    ) -> torch.nn.Module:
        return build_mlp(
            n_features=data.n_features,
            n_classes=data.n_classes,
            n_layers=int(params.get("n_layers", 2)),
            # width_i, the space's per-layer widths; `width` sets all of them.
            width=[int(params.get(f"width_{i}", params.get("width", 64)))
                   for i in range(1, int(params.get("n_layers", 2)) + 1)],
            activation=str(params.get("activation", "relu")),
            dropout=float(params.get("dropout", 0.0)),
        )

    def teacher_model(self, data: TabularData) -> torch.nn.Module:
        """An MLP of three hidden layers of 256 GELU units."""
        return build_mlp(data.n_features, data.n_classes, n_layers=3, width=256,
                         activation="gelu")
