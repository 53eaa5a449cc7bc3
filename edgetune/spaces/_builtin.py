"""Built-in NAS spaces: named, documented spaces that a trainer knows how to build.

Every space fixes `arch` to its own name, so a trainer that builds several networks knows
which builder a trial's params are for.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetune.spaces._params import (
    CategoricalParam,
    Condition,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
)


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
        FixedParam(name="arch", value="cnn"),
        IntParam(name="depth", low=1, high=3),
        IntParam(name="width", low=8, high=48, step=8),
        CategoricalParam(name="kernel_size", choices=[3, 5]),
        FloatParam(name="lr", low=1e-3, high=3e-2, log=True),
    ),
)

_MLP_MAX_LAYERS = 4

MLP = BuiltinSpace(
    name="mlp",
    description=(
        "A multilayer perceptron for tabular data: `n_layers` hidden layers, layer i of "
        "`width_i` units (linear, then the `activation` relu, gelu or tanh, then dropout at rate "
        "`dropout`) and a linear classifier; trained with Adam at learning rate `lr`. "
        "`width_i` exists only when there are at least i layers (a conditional parameter)."
    ),
    params=(
        FixedParam(name="arch", value="mlp"),
        IntParam(name="n_layers", low=1, high=_MLP_MAX_LAYERS),
        *(
            IntParam(
                name=f"width_{i}", low=16, high=256, log=True,
                condition=None if i == 1 else Condition(
                    param="n_layers", values=list(range(i, _MLP_MAX_LAYERS + 1))
                ),
            )
            for i in range(1, _MLP_MAX_LAYERS + 1)
        ),
        CategoricalParam(name="activation", choices=["relu", "gelu", "tanh"]),
        FloatParam(name="dropout", low=0.0, high=0.5),
        FloatParam(name="lr", low=1e-4, high=3e-2, log=True),
    ),
)

#: Output channels of each stage, (low, high) in steps of 8, before `width_mult`; one entry
#: per stage of the networks (`edgetune.trainers.models.N_STAGES`).
_MOBILENET_CHANNELS = ((8, 32), (16, 48), (24, 64))
_RESNET_WIDTHS = ((8, 32), (16, 64), (32, 128))

MOBILENET = BuiltinSpace(
    name="mobilenet",
    description=(
        "A MobileNetV2 / MnasNet-style network for small images: the input resized to "
        "`resolution` x `resolution` (8, 16 or 32; no resize when it is the input's size), a "
        "3x3 conv stem, then three stages of inverted-residual blocks (stride 2 in the first "
        "block of stages 2 and 3), a 1x1 conv head, global average pooling and a linear "
        "classifier. Per stage i = 1..3: `s{i}_blocks` blocks (1..3) with `s{i}_channels` "
        "output channels (multiples of 8: 8..32, 16..48, 24..64), a `s{i}_kernel` depthwise "
        "kernel (3, 5 or 7), expansion ratio `s{i}_expand` (1, 3 or 6) and squeeze-excitation "
        "`s{i}_se` (on or off). `width_mult` (0.5, 0.75 or 1.0) scales every width, rounded to "
        "a multiple of 8 (at least 8). Trained with Adam at learning rate `lr`; the builder "
        "also reads `dropout` (default 0) when a user adds it."
    ),
    params=(
        FixedParam(name="arch", value="mobilenet"),
        CategoricalParam(name="width_mult", choices=[0.5, 0.75, 1.0]),
        CategoricalParam(name="resolution", choices=[8, 16, 32]),
        *(
            param
            for i, (low, high) in enumerate(_MOBILENET_CHANNELS, start=1)
            for param in (
                IntParam(name=f"s{i}_blocks", low=1, high=3),
                IntParam(name=f"s{i}_channels", low=low, high=high, step=8),
                CategoricalParam(name=f"s{i}_kernel", choices=[3, 5, 7]),
                CategoricalParam(name=f"s{i}_expand", choices=[1, 3, 6]),
                CategoricalParam(name=f"s{i}_se", choices=[False, True]),
            )
        ),
        FloatParam(name="lr", low=1e-3, high=3e-2, log=True),
    ),
)

RESNET = BuiltinSpace(
    name="resnet",
    description=(
        "A CIFAR-style residual network for small images: a 3x3 conv stem, then three stages "
        "of basic blocks (two 3x3 conv + batch norm, with a 1x1 conv shortcut where the shape "
        "changes; stride 2 in the first block of stages 2 and 3), global average pooling and "
        "a linear classifier. Per stage i = 1..3: `s{i}_depth` blocks (1..3) of `s{i}_width` "
        "channels (multiples of 8: 8..32, 16..64, 32..128). Trained with Adam at learning "
        "rate `lr`; the builder also reads `dropout` (default 0) when a user adds it."
    ),
    params=(
        FixedParam(name="arch", value="resnet"),
        *(
            param
            for i, (low, high) in enumerate(_RESNET_WIDTHS, start=1)
            for param in (
                IntParam(name=f"s{i}_depth", low=1, high=3),
                IntParam(name=f"s{i}_width", low=low, high=high, step=8),
            )
        ),
        FloatParam(name="lr", low=1e-3, high=3e-2, log=True),
    ),
)

BUILTIN_SPACES: dict[str, BuiltinSpace] = {
    space.name: space for space in (CNN, MLP, MOBILENET, RESNET)
}
