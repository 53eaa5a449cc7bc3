"""Built-in NAS spaces: named, documented spaces that a trainer knows how to build."""

from __future__ import annotations

from dataclasses import dataclass

from edgetune.spaces._params import CategoricalParam, FloatParam, IntParam, Param


@dataclass(frozen=True)
class BuiltinSpace:
    name: str
    description: str
    params: tuple[Param, ...]


CNN = BuiltinSpace(
    name="cnn",
    description=(
        "A plain convolutional network for small images: `depth` conv blocks "
        "(conv, batch norm, ReLU; 2x2 max-pool after each of the first two), `width` channels "
        "in the first block doubling per block, a `kernel_size` kernel, global average pooling "
        "and a linear classifier; trained with Adam at learning rate `lr`."
    ),
    params=(
        IntParam(name="depth", low=1, high=3),
        IntParam(name="width", low=8, high=48, step=8),
        CategoricalParam(name="kernel_size", choices=[3, 5]),
        FloatParam(name="lr", low=1e-3, high=3e-2, log=True),
    ),
)

MLP = BuiltinSpace(
    name="mlp",
    description=(
        "A multilayer perceptron for tabular data: `n_layers` hidden layers of `width` units "
        "(linear, then the `activation` relu, gelu or tanh, then dropout at rate `dropout`) "
        "and a linear classifier; trained with Adam at learning rate `lr`."
    ),
    params=(
        IntParam(name="n_layers", low=1, high=4),
        IntParam(name="width", low=16, high=256, log=True),
        CategoricalParam(name="activation", choices=["relu", "gelu", "tanh"]),
        FloatParam(name="dropout", low=0.0, high=0.5),
        FloatParam(name="lr", low=1e-4, high=3e-2, log=True),
    ),
)

BUILTIN_SPACES: dict[str, BuiltinSpace] = {space.name: space for space in (CNN, MLP)}
