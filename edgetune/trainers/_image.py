"""The `image-classifier` trainer: a CNN from the `cnn` space, trained on small images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from edgetune.errors import InvalidSpecError
from edgetune.spaces import ParamValue
from edgetune.trainers._classifier import COMMON_OPTIONS, ClassifierTrainer
from edgetune.trainers.datasets import IMAGE_DATASETS, ImageData, load_image_dataset

if TYPE_CHECKING:
    import torch

    from edgetune.spec import TrainerSpec


def build_cnn(
    *, in_channels: int, n_classes: int, depth: int, width: int, kernel_size: int,
    dropout: float = 0.0,
) -> torch.nn.Module:
    """The `cnn` space's network; see `edgetune.spaces.BUILTIN_SPACES['cnn']`."""
    from torch import nn

    layers: list[nn.Module] = []
    channels = in_channels
    for i in range(depth):
        out = width * 2**i
        layers += [
            nn.Conv2d(channels, out, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        if i < 2:
            layers.append(nn.MaxPool2d(2))
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(channels, n_classes))
    return nn.Sequential(*layers)


class ImageClassifier(ClassifierTrainer):
    """Trains a CNN with Adam and cross-entropy; reports validation accuracy every epoch.

    Parameters it reads (defaults when absent): depth (2), width (16), kernel_size (3),
    lr (0.01), weight_decay (0), dropout (0).
    """

    name: ClassVar[str] = "image-classifier"
    datasets: ClassVar[tuple[str, ...]] = IMAGE_DATASETS
    params: ClassVar[frozenset[str]] = frozenset(
        {"depth", "width", "kernel_size", "lr", "weight_decay", "dropout"}
    )
    options: ClassVar[dict[str, str]] = {
        **COMMON_OPTIONS, "data_dir": "directory holding the dataset's files (mnist)"
    }
    skip_single_sample_batches: ClassVar[bool] = True  # batch norm

    @classmethod
    def check_option(cls, spec: TrainerSpec, key: str, value: object) -> None:
        super().check_option(spec, key, value)
        if key == "data_dir" and not isinstance(value, str):
            raise InvalidSpecError(f"trainer.options.{key}", f"is {value!r}, but must be a path")

    def load_data(self, *, val_fraction: float, seed: int) -> ImageData:
        data_dir = self.spec.options.get("data_dir")
        return load_image_dataset(
            self.spec.dataset, val_fraction=val_fraction, seed=seed,
            data_dir=None if data_dir is None else str(data_dir),
        )

    def build_model(self, params: Mapping[str, ParamValue], data: ImageData) -> torch.nn.Module:
        return build_cnn(
            in_channels=data.input_shape[0],
            n_classes=data.n_classes,
            depth=int(params.get("depth", 2)),
            width=int(params.get("width", 16)),
            kernel_size=int(params.get("kernel_size", 3)),
            dropout=float(params.get("dropout", 0.0)),
        )
