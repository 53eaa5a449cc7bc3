"""The `image-classifier` trainer: a CNN from the `cnn` space, trained on small images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from edgetune.errors import InvalidSpecError
from edgetune.spaces import ParamValue
from edgetune.trainers._base import FitResult, Report, Trainer
from edgetune.trainers.datasets import IMAGE_DATASETS, load_image_dataset

if TYPE_CHECKING:
    import torch

    from edgetune.spec import TrainerSpec

_OPTIONS = {
    "data_dir": "directory holding the dataset's files (mnist)",
    "val_fraction": "share of the data held out for validation, in (0, 0.5]",
    "threads": "CPU threads for training, >= 1",
    "device": "'cpu', 'cuda' or 'auto' (cuda when available)",
}


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


class ImageClassifier(Trainer):
    """Trains a CNN with Adam and cross-entropy; reports validation accuracy every epoch.

    Parameters it reads (defaults when absent): depth (2), width (16), kernel_size (3),
    lr (0.01), weight_decay (0), dropout (0).
    """

    name: ClassVar[str] = "image-classifier"
    datasets: ClassVar[tuple[str, ...]] = IMAGE_DATASETS
    params: ClassVar[frozenset[str]] = frozenset(
        {"depth", "width", "kernel_size", "lr", "weight_decay", "dropout"}
    )

    @classmethod
    def validate_spec(cls, spec: TrainerSpec) -> None:
        if spec.dataset not in cls.datasets:
            raise InvalidSpecError(
                "trainer.dataset",
                f"{spec.dataset!r} is not a dataset of {cls.name}; "
                f"known: {', '.join(cls.datasets)}",
            )
        for key, value in spec.options.items():
            if key not in _OPTIONS:
                known = "; ".join(f"{k}: {v}" for k, v in _OPTIONS.items())
                raise InvalidSpecError(f"trainer.options.{key}", f"unknown option; known: {known}")
            _check_option(key, value)

    def fit(self, params: Mapping[str, ParamValue], *, report: Report) -> FitResult:
        import numpy as np
        import torch
        from torch import nn

        options = self.spec.options
        seed = self.spec.seed or 0
        torch.manual_seed(seed)
        torch.set_num_threads(int(options.get("threads") or 1))
        device = _device(str(options.get("device") or "auto"))
        data = load_image_dataset(
            self.spec.dataset,
            val_fraction=float(options.get("val_fraction") or 0.2),
            seed=seed,
            data_dir=_str_or_none(options.get("data_dir")),
        )
        model = build_cnn(
            in_channels=data.input_shape[0],
            n_classes=data.n_classes,
            depth=int(params.get("depth", 2)),
            width=int(params.get("width", 16)),
            kernel_size=int(params.get("kernel_size", 3)),
            dropout=float(params.get("dropout", 0.0)),
        ).to(device)
        optimizer = torch.optim.Adam(
            model.parameters(),
            lr=float(params.get("lr", 0.01)),
            weight_decay=float(params.get("weight_decay", 0.0)),
        )
        loss_fn = nn.CrossEntropyLoss()
        x_train = torch.from_numpy(data.x_train).to(device)
        y_train = torch.from_numpy(data.y_train).to(device)
        x_val = torch.from_numpy(data.x_val).to(device)
        y_val = torch.from_numpy(data.y_val).to(device)
        generator = torch.Generator().manual_seed(seed)
        batch = self.spec.batch_size

        accuracy = 0.0
        for epoch in range(1, self.spec.epochs + 1):
            model.train()
            order = torch.randperm(len(x_train), generator=generator).to(device)
            for start in range(0, len(order), batch):
                idx = order[start : start + batch]
                if len(idx) < 2:  # batch norm cannot train on a single sample
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x_train[idx]), y_train[idx])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training diverged at epoch {epoch} (loss {loss})")
                loss.backward()
                optimizer.step()
            accuracy = _accuracy(model, x_val, y_val, batch=max(batch, 256))
            report(epoch, accuracy)

        model = model.cpu().eval()
        example = torch.from_numpy(np.zeros((1, *data.input_shape), dtype=np.float32))
        return FitResult(model=model, example_input=example, metrics={"accuracy": accuracy})


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch: int) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            pred = model(x[start : start + batch]).argmax(dim=1)
            correct += int((pred == y[start : start + batch]).sum())
    return correct / max(1, len(x))


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _check_option(key: str, value: object) -> None:
    field = f"trainer.options.{key}"
    if key == "val_fraction" and not (
        isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 0.5
    ):
        raise InvalidSpecError(field, f"is {value!r}, but must be a number in (0, 0.5]")
    if key == "threads" and not (isinstance(value, int) and not isinstance(value, bool)
                                 and value >= 1):
        raise InvalidSpecError(field, f"is {value!r}, but must be an integer >= 1")
    if key == "device" and value not in ("cpu", "cuda", "auto"):
        raise InvalidSpecError(field, f"is {value!r}, but must be one of 'cpu', 'cuda', 'auto'")
    if key == "data_dir" and not isinstance(value, str):
        raise InvalidSpecError(field, f"is {value!r}, but must be a path string")
