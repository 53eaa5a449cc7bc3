"""The `image-classifier` trainer: a CNN from the `cnn` space, trained on small images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from edgetune.spaces import BUILTIN_SPACES, ParamValue
from edgetune.trainers._classifier import (
    COMMON_OPTIONS,
    COMMON_PARAMS,
    ClassifierTrainer,
)
from edgetune.trainers.datasets import (
    DATASET_OPTIONS,
    IMAGE_DATASETS,
    ImageData,
    load_image_dataset,
)

if TYPE_CHECKING:
    import torch



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


#: Architectures the trainer builds, by the `arch` parameter each built-in space fixes.
ARCHITECTURES = ("cnn", "mobilenet", "resnet")


class ImageClassifier(ClassifierTrainer):
    """Trains a CNN, MobileNet or ResNet; reports validation accuracy every epoch.

    The `arch` parameter (fixed by the built-in spaces `cnn`, `mobilenet`, `resnet`; default
    cnn) picks the network; the space's other parameters shape it (their defaults apply when
    absent). lr (0.01), weight_decay (0) and the compression knobs of
    `edgetune.trainers.knobs` apply to all.
    """

    name: ClassVar[str] = "image-classifier"
    datasets: ClassVar[tuple[str, ...]] = IMAGE_DATASETS
    params: ClassVar[frozenset[str]] = frozenset(
        {"arch", "dropout", *COMMON_PARAMS}.union(
            *({p.name for p in BUILTIN_SPACES[a].params} for a in ARCHITECTURES)
        )
    )
    options: ClassVar[dict[str, str]] = {**COMMON_OPTIONS, **DATASET_OPTIONS}
    skip_single_sample_batches: ClassVar[bool] = True  # batch norm
    allowed_values: ClassVar[dict[str, tuple[ParamValue, ...]]] = {"arch": ARCHITECTURES}

    def load_data(self, *, val_fraction: float, seed: int) -> ImageData:
        return load_image_dataset(
            self.spec.dataset, val_fraction=val_fraction, seed=seed,
            data_dir=self.data_dir, options=self.spec.options,
        )

    def build_model(self, params: Mapping[str, ParamValue], data: ImageData) -> torch.nn.Module:
        arch = str(params.get("arch", "cnn"))
        if arch != "cnn":
            from edgetune.trainers.models import BUILDERS

            return BUILDERS[arch](
                params, in_channels=data.input_shape[0], n_classes=data.n_classes
            )
        return build_cnn(
            in_channels=data.input_shape[0],
            n_classes=data.n_classes,
            depth=int(params.get("depth", 2)),
            width=int(params.get("width", 16)),
            kernel_size=int(params.get("kernel_size", 3)),
            dropout=float(params.get("dropout", 0.0)),
        )

    def teacher_model(self, data: ImageData) -> torch.nn.Module:
        """A ResNet of three stages of two 64-, 128- and 256-channel blocks."""
        from edgetune.trainers.models import build_resnet

        wide = {f"s{i}_{k}": v for i, w in enumerate((64, 128, 256), 1)
                for k, v in (("depth", 2), ("width", w))}
        return build_resnet(wide, in_channels=data.input_shape[0], n_classes=data.n_classes)
