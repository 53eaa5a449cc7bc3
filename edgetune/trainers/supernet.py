"""One-shot NAS: a weight-sharing supernet over the `mobilenet` space (Once-for-All style).

`MobileNetSupernet` holds the weights of the largest network of a (possibly narrowed)
`mobilenet` space, built by `build_mobilenet` itself. Every other network of the space is a
slice of it: a subnet's tensor is the leading channels of the supernet's tensor of the same
name, and the centre of its depthwise kernels (OFA's elastic kernel, without the learned
kernel transform). A stage of fewer blocks uses its first blocks; `expand == 1` skips the
expand conv and runs the depthwise conv on the block's input channels, as `InvertedResidual`
does. Because the slicing rule is the same for every tensor, a subnet is computed by running
`build_mobilenet(params)`'s own layout (built on the meta device, so it costs no memory) on
the sliced tensors: `extract` copies exactly those tensors into a real network, so the two
agree by construction, and the extracted network is an ordinary trial's model.

`train_supernet` trains it once per job with the sandwich rule (largest, smallest and a few
random subnets per step, gradients accumulated) and in-place distillation. A trial then takes
`subnet(...)`: its network with inherited weights and batch-norm statistics recalibrated on
training data, ready to evaluate in seconds. `SupernetStore` keeps one trained supernet per
key on disk, trained once even when several trial processes ask at the same time.

Imported only in trial processes (it imports torch at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import random
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from edgetune.spaces import FloatParam, Param, ParamValue, finite_values
from edgetune.trainers.datasets import ImageData
from edgetune.trainers.models import MOBILENET_PARAMS, build_mobilenet

__all__ = [
    "ARCH_PARAMS",
    "MobileNetSupernet",
    "SupernetConfig",
    "SupernetStore",
    "evaluate",
    "recalibrate_bn",
    "subnet",
    "supernet_key",
    "train_supernet",
]

logger = logging.getLogger(__name__)

#: The parameters that shape a `mobilenet` network; dropout has no weights, so it is not one.
ARCH_PARAMS = MOBILENET_PARAMS - {"dropout"}
#: Bumped when the layout or the slicing rule changes, so stored supernets are not reused.
_FORMAT_VERSION = 1
_KEY = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class SupernetConfig:
    """How a supernet is trained; every field changes the trained weights."""

    #: Supernet training epochs.
    epochs: int = 20
    #: Random subnets per step besides the largest and the smallest (the sandwich rule).
    n_random: int = 2
    #: In-place distillation: the smaller subnets learn the largest's soft outputs.
    distill: bool = True
    batch_size: int = 128
    #: Adam's learning rate, annealed to 0 over training on a cosine.
    lr: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"The value of `{name}` is {value}, but must be >= 1.")
        if self.n_random < 0:
            raise ValueError(f"The value of `n_random` is {self.n_random}, but must be >= 0.")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"The value of `lr` is {self.lr}, but must be a number > 0.")

    def key_fields(self) -> dict[str, Any]:
        """What the content hash of a trained supernet covers: all fields."""
        return asdict(self)


class MobileNetSupernet(nn.Module):
    """The largest network of a `mobilenet` space, whose slices are all its other networks.

    Call `set_active(params)` and `forward` runs that subnet; `extract(params)` returns it as a
    standalone network. Parameters absent from `space` take `build_mobilenet`'s defaults; the
    space's non-architecture parameters (lr, dropout, compression knobs) are ignored, and so
    are conditions (every architecture parameter of `mobilenet` is unconditional).
    """

    def __init__(self, space: Sequence[Param], *, in_channels: int, n_classes: int) -> None:
        super().__init__()
        self.in_channels, self.n_classes = in_channels, n_classes
        self.space: dict[str, Param] = {p.name: p for p in space if p.name in ARCH_PARAMS}
        self.config: SupernetConfig | None = None  # set by `train_supernet`
        self.net = build_mobilenet(self.largest(), in_channels=in_channels, n_classes=n_classes)
        self._active: nn.Module
        self.set_active(self.largest())

    def largest(self) -> dict[str, ParamValue]:
        """The largest value of every architecture parameter of the space (SE on if it may be)."""
        return {name: max(_values(p)) for name, p in sorted(self.space.items())}

    def smallest(self) -> dict[str, ParamValue]:
        """The smallest value of every architecture parameter of the space (SE off if it may be)."""
        return {name: min(_values(p)) for name, p in sorted(self.space.items())}

    def sample(self, rng: random.Random | np.random.Generator) -> dict[str, ParamValue]:
        """A uniform random subnet: each architecture parameter uniform over its values."""
        out: dict[str, ParamValue] = {}
        for name, param in sorted(self.space.items()):
            if isinstance(param, FloatParam) and param.step is None:
                out[name] = float(rng.uniform(param.low, param.high))
            else:
                values = _values(param)
                index = (rng.randrange(len(values)) if isinstance(rng, random.Random)
                         else int(rng.integers(len(values))))
                out[name] = values[index]
        return out

    def set_active(self, params: Mapping[str, ParamValue]) -> None:
        """Make `forward` run the subnet of `params` (its architecture parameters only)."""
        arch = {k: v for k, v in params.items() if k in ARCH_PARAMS}
        with torch.device("meta"):
            layout = build_mobilenet(arch, in_channels=self.in_channels, n_classes=self.n_classes)
        self._check_fits(layout)
        # Not a submodule: its tensors are on the meta device and never saved or trained.
        object.__setattr__(self, "_active", layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._active.train(self.training)
        return functional_call(self._active, self._sliced(self._active), (x,))

    def extract(self, params: Mapping[str, ParamValue]) -> nn.Sequential:
        """`build_mobilenet(params)` holding the supernet's weights and batch-norm statistics
        for it (copies; the supernet is left as it is), in eval mode."""
        model = build_mobilenet(params, in_channels=self.in_channels, n_classes=self.n_classes)
        self._check_fits(model)
        with torch.no_grad():
            model.load_state_dict({k: v.clone() for k, v in self._sliced(model).items()})
        return model.eval()

    def _sliced(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The supernet's tensors cut to the shapes of `model`'s (views, so gradients and
        batch-norm statistic updates reach the supernet)."""
        full = dict(_tensors(self.net))
        return {name: _slice(full[name], tensor.shape)
                for name, tensor in _tensors(model)}

    def _check_fits(self, model: nn.Module) -> None:
        full = dict(_tensors(self.net))
        for name, tensor in _tensors(model):
            big = full.get(name)
            if big is None or big.dim() != tensor.dim() or any(
                n > m or (i >= 2 and (m - n) % 2) for i, (n, m) in enumerate(
                    zip(tensor.shape, big.shape, strict=True))
            ):
                raise ValueError(
                    f"The subnet's `{name}` of shape {tuple(tensor.shape)} is not a slice of the "
                    "supernet's (largest: "
                    f"{None if big is None else tuple(big.shape)}): its params lie outside the "
                    "supernet's space."
                )


def train_supernet(
    space: Sequence[Param], data: ImageData, config: SupernetConfig, *, threads: int = 1,
    progress: Callable[[int, float], None] | None = None,
) -> MobileNetSupernet:
    """Train a supernet of `space` on `data` with the sandwich rule; deterministic for a seed.

    Each step: the largest subnet learns the labels (cross-entropy); the smallest and
    `config.n_random` random subnets learn the largest's detached soft outputs (KL divergence)
    when `config.distill`, else the labels; their gradients add up before one Adam step.
    `progress(epoch, accuracy)` is called after each epoch with the largest subnet's validation
    accuracy (batch norm recalibrated on the training data).
    """
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    model = MobileNetSupernet(space, in_channels=data.input_shape[0], n_classes=data.n_classes)
    model.config = config
    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    generator = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    largest, smallest = model.largest(), model.smallest()
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs * steps_per_epoch
    )
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            if len(idx) < 2:  # batch norm cannot train on one sample
                continue
            x, y = x_train[idx], y_train[idx]
            optimizer.zero_grad(set_to_none=True)
            model.set_active(largest)
            logits = model(x)
            _backward(F.cross_entropy(logits, y), epoch)
            soft = F.softmax(logits.detach(), dim=1)
            for params in [smallest, *(model.sample(rng) for _ in range(config.n_random))]:
                model.set_active(params)
                out = model(x)
                loss = (F.kl_div(F.log_softmax(out, dim=1), soft, reduction="batchmean")
                        if config.distill else F.cross_entropy(out, y))
                _backward(loss, epoch)
            optimizer.step()
            schedule.step()
        if progress is not None:
            progress(epoch, evaluate(subnet(model, largest, data), data.x_val, data.y_val))
    model.set_active(largest)
    return model.eval()


def recalibrate_bn(
    model: nn.Module, x: np.ndarray, *, samples: int = 2000, batch_size: int = 256
) -> None:
    """Recompute every batch norm's running statistics on the first `samples` inputs of `x`.

    A subnet's statistics differ from those the supernet tracked while training all subnets
    at once, so they are reset and averaged (momentum None: a cumulative average) over forward
    passes with only the batch norms in training mode; the model ends in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    inputs = torch.from_numpy(x[:samples])
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                model(inputs[start : start + batch_size])
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> float:
    """Accuracy of `model` on (`x`, `y`), in eval mode without gradients."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            pred = model(torch.from_numpy(x[start : start + batch_size])).argmax(dim=1)
            correct += int((pred == torch.from_numpy(y[start : start + batch_size])).sum())
    return correct / max(1, len(x))


def subnet(
    supernet: MobileNetSupernet, params: Mapping[str, ParamValue], data: ImageData
) -> nn.Sequential:
    """The standalone network of `params` with inherited weights and batch norms recalibrated
    on `data.x_train`: ready to evaluate, fine-tune or export."""
    model = supernet.extract(params)
    recalibrate_bn(model, data.x_train)
    return model


def supernet_key(
    space: Sequence[Param], *, dataset: str, dataset_options: Mapping[str, object],
    config: SupernetConfig, in_channels: int, n_classes: int,
) -> str:
    """sha256 hex of everything a trained supernet depends on: the space's architecture
    parameters, the dataset and its options, the training config and the data's shape."""
    content = {
        "version": _FORMAT_VERSION,
        "space": _space_json(space),
        "dataset": dataset,
        "dataset_options": dict(dataset_options),
        "config": config.key_fields(),
        "in_channels": in_channels,
        "n_classes": n_classes,
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class SupernetStore:
    """Trained supernets under `root`, one per key: `<key>.pt` (a state dict of tensors only)
    and `<key>.json` (what it is, with the sha256 of the `.pt`), written in that order.

    `load_or_train` holds an exclusive lock on `<key>.lock` while it loads or trains, so
    processes wanting one key train it once; other keys do not wait.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, key: str) -> Path:
        """The weights file of `key` (a sha256 hex digest; never a path from elsewhere)."""
        if len(key) != 64 or not set(key) <= _KEY:
            raise ValueError(f"The value of `key` is {key!r}, but must be a sha256 hex digest.")
        return self.root / f"{key}.pt"

    def load_or_train(
        self, key: str, space: Sequence[Param], build: Callable[[], MobileNetSupernet]
    ) -> tuple[MobileNetSupernet, bool]:
        """The supernet stored under `key`, or `build()`'s, stored; and whether it was built.

        A stored one whose files are missing, corrupt or describe another space is built again.
        """
        path = self.path(key)
        with self._locked(key):
            model = self._load(path, space)
            if model is not None:
                return model, False
            model = build()
            self._save(path, model)
            return model, True

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        with open(self.root / f"{key}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self, path: Path, space: Sequence[Param]) -> MobileNetSupernet | None:
        if not path.exists():
            return None
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            blob = path.read_bytes()
            if (meta.get("version") != _FORMAT_VERSION
                    or meta.get("sha256") != hashlib.sha256(blob).hexdigest()
                    or meta.get("space") != _space_json(space)):
                logger.warning("stored supernet %s does not match its record; training again",
                               path.name)
                return None
            model = MobileNetSupernet(
                space, in_channels=int(meta["in_channels"]), n_classes=int(meta["n_classes"])
            )
            with open(path, "rb") as f:
                state = torch.load(f, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            if meta.get("config") is not None:
                model.config = SupernetConfig(**meta["config"])
        except Exception as e:  # whatever fails to load is trained again, never trusted
            logger.warning("stored supernet %s cannot be loaded (%s); training again",
                           path.name, e)
            return None
        model.set_active(model.largest())
        return model.eval()

    def _save(self, path: Path, model: MobileNetSupernet) -> None:
        weights = _atomic_write(path, lambda f: torch.save(model.state_dict(), f))
        meta = {
            "version": _FORMAT_VERSION,
            "sha256": hashlib.sha256(weights).hexdigest(),
            "space": _space_json(list(model.space.values())),
            "in_channels": model.in_channels,
            "n_classes": model.n_classes,
            "config": None if model.config is None else model.config.key_fields(),
        }
        _atomic_write(path.with_suffix(".json"),
                      lambda f: f.write(json.dumps(meta, sort_keys=True).encode()))


def _values(param: Param) -> list[ParamValue]:
    """The values a parameter can take; a continuous float's are its two ends."""
    values = finite_values(param)
    if values is None and isinstance(param, FloatParam):
        return [param.low, param.high]
    return values or []


def _space_json(space: Sequence[Param]) -> list[dict[str, Any]]:
    """The architecture parameters of `space` as JSON, sorted by name."""
    return sorted((p.model_dump(mode="json") for p in space if p.name in ARCH_PARAMS),
                  key=lambda p: str(p["name"]))


def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """`model`'s parameters and buffers by state-dict name."""
    yield from model.named_parameters()
    yield from model.named_buffers()


def _slice(full: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The leading entries of `full` along the channel dims (0 and 1), the centre along the
    kernel dims (2 and 3)."""
    out = full
    for dim, size in enumerate(shape):
        start = (full.shape[dim] - size) // 2 if dim >= 2 else 0
        out = out.narrow(dim, start, size)
    return out


def _backward(loss: torch.Tensor, epoch: int) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"supernet training diverged at epoch {epoch} (loss {loss})")
    loss.backward()


def _atomic_write(path: Path, write: Callable[[Any], object]) -> bytes:
    """Write `path` through a temp file in its directory and `os.replace`; the bytes written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            f.seek(0)
            data = f.read()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return data
