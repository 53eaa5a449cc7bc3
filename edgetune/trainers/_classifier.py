"""What the built-in classifiers share: option checks and the training loop (Adam, CE)."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from edgetune.errors import InvalidSpecError
from edgetune.spaces import ParamValue
from edgetune.trainers._base import FitResult, Report, Trainer

if TYPE_CHECKING:
    import numpy as np
    import torch

    from edgetune.spec import TrainerSpec

#: Options every classifier takes, with the rule each must meet.
COMMON_OPTIONS = {
    "val_fraction": "share of the data held out for validation, in (0, 0.5]",
    "threads": "CPU threads for training, >= 1",
    "device": "'cpu', 'cuda' or 'auto' (cuda when available)",
}


class ClassifierTrainer(Trainer):
    """A supervised classifier trained with Adam and cross-entropy on in-memory arrays.

    Subclasses say which options they take (`options`) and implement `load_data` and
    `build_model`; `fit` loads, builds, trains for `spec.epochs` epochs and reports the
    validation accuracy after each one.
    """

    #: Option name -> what it means; `COMMON_OPTIONS` plus the subclass's own.
    options: ClassVar[dict[str, str]] = COMMON_OPTIONS
    #: Skip a last batch of one sample (batch norm cannot train on it).
    skip_single_sample_batches: ClassVar[bool] = False

    @classmethod
    def validate_spec(cls, spec: TrainerSpec) -> None:
        if spec.dataset not in cls.datasets:
            raise InvalidSpecError(
                "trainer.dataset",
                f"{spec.dataset!r} is not a dataset of {cls.name}; "
                f"known: {', '.join(cls.datasets)}",
            )
        for key, value in spec.options.items():
            if key not in cls.options:
                known = "; ".join(f"{k}: {v}" for k, v in cls.options.items())
                raise InvalidSpecError(f"trainer.options.{key}", f"unknown option; known: {known}")
            cls.check_option(spec, key, value)

    @classmethod
    def check_option(cls, spec: TrainerSpec, key: str, value: object) -> None:
        """Raise `InvalidSpecError` when option `key` breaks its rule; extend for new ones."""
        field = f"trainer.options.{key}"
        if key == "val_fraction" and not (
            isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 0.5
        ):
            raise InvalidSpecError(field, f"is {value!r}, but must be a number in (0, 0.5]")
        if key == "threads" and not int_in(value, 1, None):
            raise InvalidSpecError(field, f"is {value!r}, but must be an integer >= 1")
        if key == "device" and value not in ("cpu", "cuda", "auto"):
            raise InvalidSpecError(
                field, f"is {value!r}, but must be one of 'cpu', 'cuda', 'auto'"
            )

    @abc.abstractmethod
    def load_data(self, *, val_fraction: float, seed: int) -> Any:
        """The dataset: an object with x_train, y_train, x_val, y_val arrays and n_classes."""

    @abc.abstractmethod
    def build_model(self, params: Mapping[str, ParamValue], data: Any) -> torch.nn.Module:
        """The network for `params`, sized for `data`."""

    def fit(self, params: Mapping[str, ParamValue], *, report: Report) -> FitResult:
        import torch
        from torch import nn

        options = self.spec.options
        seed = self.spec.seed or 0
        torch.manual_seed(seed)
        torch.set_num_threads(int(options.get("threads") or 1))
        device = pick_device(str(options.get("device") or "auto"))
        data = self.load_data(val_fraction=float(options.get("val_fraction") or 0.2), seed=seed)
        model = self.build_model(params, data).to(device)
        optimizer = torch.optim.Adam(
            model.parameters(),
            lr=float(params.get("lr", 0.01)),
            weight_decay=float(params.get("weight_decay", 0.0)),
        )
        loss_fn = nn.CrossEntropyLoss()
        x_train, y_train, x_val, y_val = (
            _tensor(a, device) for a in (data.x_train, data.y_train, data.x_val, data.y_val)
        )
        generator = torch.Generator().manual_seed(seed)
        batch = self.spec.batch_size
        smallest = 2 if self.skip_single_sample_batches else 1

        accuracy = 0.0
        for epoch in range(1, self.spec.epochs + 1):
            model.train()
            order = torch.randperm(len(x_train), generator=generator).to(device)
            for start in range(0, len(order), batch):
                idx = order[start : start + batch]
                if len(idx) < smallest:
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x_train[idx]), y_train[idx])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training diverged at epoch {epoch} (loss {loss})")
                loss.backward()
                optimizer.step()
            accuracy = evaluate_accuracy(model, x_val, y_val, batch=max(batch, 256))
            report(epoch, accuracy)

        model = model.cpu().eval()
        example = torch.zeros((1, *data.x_train.shape[1:]), dtype=torch.float32)
        return FitResult(model=model, example_input=example, metrics={"accuracy": accuracy})


def evaluate_accuracy(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch: int
) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            pred = model(x[start : start + batch]).argmax(dim=1)
            correct += int((pred == y[start : start + batch]).sum())
    return correct / max(1, len(x))


def pick_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def int_in(value: object, low: int, high: int | None) -> bool:
    # bool is an int subclass, but `threads: true` is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return low <= value and (high is None or value <= high)


def _tensor(array: np.ndarray, device: Any) -> torch.Tensor:
    import torch

    return torch.from_numpy(array).to(device)
