"""What the built-in classifiers share: option checks and the training loop (Adam, CE)."""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgetune.errors import InvalidSpecError, TrialFailed
from edgetune.spaces import Param, ParamValue
from edgetune.trainers._base import FitResult, Report, Trainer
from edgetune.trainers.datasets import check_dataset_options, int_in
from edgetune.trainers.knobs import KNOBS, Compression, check_knobs

if TYPE_CHECKING:
    import numpy as np
    import torch

    from edgetune.spec import TrainerSpec

#: Options every classifier takes, with the rule each must meet.
COMMON_OPTIONS = {
    "val_fraction": "share of the data held out for validation, in (0, 0.5]",
    "threads": "CPU threads for training, >= 1",
    "device": "'cpu', 'cuda' or 'auto' (cuda when available)",
    "teacher": "the distillation teacher: 'builtin' (a larger model trained once per job) or "
               "the file name of an ONNX model in the server's <data_dir>/models/",
}
#: Parameters every classifier reads: the optimizer's and the compression knobs.
COMMON_PARAMS = frozenset({"lr", "weight_decay", *KNOBS})
#: Training inputs handed to static int8 calibration.
CALIBRATION_SAMPLES = 256
CHECKPOINT_FILE = "checkpoint.pt"
ONNX_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}\.onnx")


class ClassifierTrainer(Trainer):
    """A supervised classifier trained with Adam and cross-entropy on in-memory arrays.

    Subclasses say which options they take (`options`) and implement `load_data` and
    `build_model`; `fit` loads, builds, trains for `spec.epochs` epochs and reports the
    validation accuracy after each one.
    """

    #: Option name -> what it means; `COMMON_OPTIONS` plus the subclass's own.
    options: ClassVar[dict[str, str]] = COMMON_OPTIONS
    #: Parameter -> the only values this trainer takes (an architecture it builds).
    allowed_values: ClassVar[dict[str, tuple[ParamValue, ...]]] = {}
    #: Skip a last batch of one sample (batch norm cannot train on it).
    skip_single_sample_batches: ClassVar[bool] = False
    #: `params` and `flops` are known from the architecture before training, so multi-objective
    #: early stopping can rank candidates on them (and on FLOPs in place of latency).
    progress_metrics: ClassVar[tuple[str, ...]] = ("accuracy", "params", "flops")
    mutable_params: ClassVar[frozenset[str]] = frozenset({"lr", "weight_decay"})
    #: The network a trial starts from in place of `build_model`'s freshly initialised one,
    #: when the framework sets it: a one-shot job's finalists start from the supernet's
    #: weights (`edgetune.search.one_shot.start_from_supernet`).
    warm_start: Callable[[Mapping[str, ParamValue], Any], torch.nn.Module] | None = None

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
        check_dataset_options(spec.dataset, spec.options)

    @classmethod
    def validate_space(cls, params: Sequence[Param]) -> None:
        check_knobs(params, cls.name, cls.allowed_values)

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
        if key == "teacher" and not (
            value == "builtin" or (isinstance(value, str) and ONNX_FILE.fullmatch(value))
        ):
            raise InvalidSpecError(
                field, f"is {value!r}, but must be 'builtin' or an ONNX file name such as "
                       "'teacher.onnx' (letters, digits, . _ -; no directories)"
            )

    def split(self) -> Any:
        """The data split as every trial of the job splits it (`val_fraction`, the seed)."""
        return self.load_data(val_fraction=float(self.spec.options.get("val_fraction") or 0.2),
                              seed=self.spec.seed or 0)

    @abc.abstractmethod
    def load_data(self, *, val_fraction: float, seed: int) -> Any:
        """The dataset: an object with x_train, y_train, x_val, y_val arrays and n_classes."""

    @abc.abstractmethod
    def build_model(self, params: Mapping[str, ParamValue], data: Any) -> torch.nn.Module:
        """The network for `params`, sized for `data`."""

    def untrained(self, params: Mapping[str, ParamValue]) -> FitResult:
        """The network with initial weights, channel-pruned as it will be after training (how
        many channels a block keeps depends on the ratio only; which ones, on training), at the
        precision it will ship in."""
        import torch

        from edgetune.trainers import compression

        seed = self.spec.seed or 0
        torch.manual_seed(seed)
        data = self.split()
        knobs = Compression.from_params(params)
        model = self.build_model(params, data)
        if knobs.prune == "channel" and compression.channel_prunable(model):
            compression.channel_prune(model, knobs.prune_amount, knobs.prune_criterion)
        return FitResult(
            model=model.eval(), example_input=torch.zeros((1, *data.x_train.shape[1:])),
            quantization=knobs.quantization,
            calibration=data.x_train[: min(len(data.x_train), CALIBRATION_SAMPLES)],
        )

    def fit(
        self, params: Mapping[str, ParamValue], *, report: Report,
        checkpoint_dir: Path | None = None,
    ) -> FitResult:
        import torch

        options = self.spec.options
        seed = self.spec.seed or 0
        torch.manual_seed(seed)
        torch.set_num_threads(int(options.get("threads") or 1))
        device = pick_device(str(options.get("device") or "auto"))
        data = self.split()
        knobs = Compression.from_params(params)
        model = (self.warm_start or self.build_model)(params, data).to(device)
        teacher = None
        if knobs.distill_alpha > 0:
            from edgetune.trainers.teacher import teacher_logits

            teacher = _tensor(teacher_logits(self, data), device)
        loop = TrainingLoop(self, params, knobs, data, device, teacher, report)
        loop.train(model, first=1, last=self.spec.epochs, checkpoint_dir=checkpoint_dir)
        model = loop.compress(model)
        model = model.cpu().eval()
        example = torch.zeros((1, *data.x_train.shape[1:]), dtype=torch.float32)
        calibration = data.x_train[: min(len(data.x_train), CALIBRATION_SAMPLES)]
        return FitResult(
            model=model, example_input=example,
            metrics={"accuracy": loop.accuracy, **loop.compression_metrics(model)},
            quantization=knobs.quantization, calibration=calibration,
            eval_data=(data.x_val, data.y_val), compression=knobs.describe(),
        )

    def teacher_model(self, data: Any) -> torch.nn.Module:
        """The built-in teacher (trainer option `teacher: builtin`): a larger network of this
        trainer's kind, trained once per job; see `edgetune.trainers.teacher`."""
        raise TrialFailed(f"{self.name} has no built-in teacher; give an ONNX model instead")


class TrainingLoop:
    """One trial's training: epochs with optional distillation, then pruning and QAT."""

    def __init__(
        self, trainer: ClassifierTrainer, params: Mapping[str, ParamValue], knobs: Compression,
        data: Any, device: Any, teacher: torch.Tensor | None, report: Report,
    ) -> None:
        import torch

        self.trainer, self.params, self.knobs, self.report = trainer, params, knobs, report
        self.device, self.teacher = device, teacher
        self.x_train, self.y_train, self.x_val, self.y_val = (
            _tensor(a, device) for a in (data.x_train, data.y_train, data.x_val, data.y_val)
        )
        seed = trainer.spec.seed or 0
        self.generator = torch.Generator().manual_seed(seed)
        self.accuracy = 0.0
        self.epoch = 0
        self.removed_channels = 0
        self.architecture: dict[str, float] = {}

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        import torch

        return torch.optim.Adam(
            model.parameters(),
            lr=float(self.params.get("lr", 0.01)),
            weight_decay=float(self.params.get("weight_decay", 0.0)),
        )

    def train(
        self, model: torch.nn.Module, *, first: int, last: int,
        checkpoint_dir: Path | None = None,
    ) -> None:
        """Train epochs `first`..`last`, reporting each; resume from `checkpoint_dir` if set."""
        import torch
        from torch import nn

        from edgetune.trainers import compression

        optimizer = self.optimizer(model)
        if checkpoint_dir is not None:
            first = max(first, self._restore(checkpoint_dir, model, optimizer) + 1)
        if not self.architecture:
            from edgetune.trainers.export import count_params
            from edgetune.trainers.models import count_flops

            example = self.x_train[:1]
            self.architecture = {"params": float(count_params(model)),
                                 "flops": float(count_flops(model, example))}
        loss_fn = nn.CrossEntropyLoss()
        batch = self.trainer.spec.batch_size
        smallest = 2 if self.trainer.skip_single_sample_batches else 1
        slimming = self.knobs.prune == "channel" and self.knobs.prune_criterion == "bn"
        for epoch in range(first, last + 1):
            model.train()
            order = torch.randperm(len(self.x_train), generator=self.generator).to(self.device)
            for start in range(0, len(order), batch):
                idx = order[start : start + batch]
                if len(idx) < smallest:
                    continue
                optimizer.zero_grad(set_to_none=True)
                logits = model(self.x_train[idx])
                if self.teacher is None:
                    loss = loss_fn(logits, self.y_train[idx])
                else:
                    loss = compression.distillation_loss(
                        logits, self.teacher[idx], self.y_train[idx],
                        temperature=self.knobs.distill_temperature,
                        alpha=self.knobs.distill_alpha,
                    )
                if slimming:  # Network Slimming: L1 on BN scales makes channels prunable
                    loss = loss + self.knobs.slimming_l1 * compression.bn_l1_penalty(model)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training diverged at epoch {epoch} (loss {loss})")
                loss.backward()
                optimizer.step()
            self.epoch = epoch
            self.accuracy = evaluate_accuracy(
                model, self.x_val, self.y_val, batch=max(batch, 256)
            )
            if checkpoint_dir is not None:
                self._save(checkpoint_dir, model, optimizer)
            self.report(epoch, {"accuracy": self.accuracy, **self.architecture})

    def compress(self, model: torch.nn.Module) -> torch.nn.Module:
        """Prune, fine-tune and prepare for quantization as the knobs say; the final model."""
        from edgetune.trainers import compression

        knobs = self.knobs
        if knobs.prune == "magnitude":
            compression.magnitude_prune(model, knobs.prune_amount)
        elif knobs.prune == "channel" and compression.channel_prunable(model):
            # (A network without hidden channels, e.g. every expansion ratio 1, has none to
            # remove: there the knob changes nothing, and `pruned_channels` says 0.)
            self.removed_channels = compression.channel_prune(
                model, knobs.prune_amount, knobs.prune_criterion
            )
            self.architecture = {}  # fewer channels: measured again when fine-tuning starts
        if knobs.prune != "none":
            self.fine_tune(model)
        if knobs.quantization == "qat":
            fake = compression.prepare_qat(model)  # fake-quantized weights and activations
            self.fine_tune(fake)
            model = compression.strip_qat(fake, model)
        if knobs.prune == "magnitude":
            # Fine-tuning regrows pruned weights; prune again to reach the target sparsity.
            compression.magnitude_prune(model, knobs.prune_amount)
        if knobs.prune != "none" or knobs.quantization == "qat":
            self.accuracy = evaluate_accuracy(model, self.x_val, self.y_val, batch=256)
        return model

    def fine_tune(self, model: torch.nn.Module) -> None:
        """Train `finetune_epochs` more epochs, numbered on from the last one reported."""
        self.train(model, first=self.epoch + 1, last=self.epoch + self.knobs.finetune_epochs)

    def compression_metrics(self, model: torch.nn.Module) -> dict[str, float]:
        from edgetune.trainers import compression

        return {
            "sparsity": compression.sparsity(model),
            "pruned_channels": float(self.removed_channels),
        }

    def _save(self, directory: Path, model: torch.nn.Module, optimizer: Any) -> None:
        import torch

        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "epoch": self.epoch, "accuracy": self.accuracy, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "generator": self.generator.get_state(),
        }
        tmp = directory / ".checkpoint.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(directory / CHECKPOINT_FILE)

    def _restore(self, directory: Path, model: torch.nn.Module, optimizer: Any) -> int:
        """Load the checkpoint in `directory` if there is one; the last epoch it holds."""
        import torch

        path = directory / CHECKPOINT_FILE
        if not path.exists():
            return 0
        state = torch.load(path, map_location=self.device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            # The checkpoint may come from another trial (a PBT exploit): this trial's
            # hyperparameters win over the ones saved with the optimizer's state.
            group["lr"] = float(self.params.get("lr", 0.01))
            group["weight_decay"] = float(self.params.get("weight_decay", 0.0))
        self.generator.set_state(state["generator"])
        self.epoch, self.accuracy = int(state["epoch"]), float(state["accuracy"])
        return self.epoch


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


def _tensor(array: np.ndarray, device: Any) -> torch.Tensor:
    import torch

    return torch.from_numpy(array).to(device)
