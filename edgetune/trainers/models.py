"""Networks of the `mobilenet` and `resnet` NAS spaces, their channel-pruning hooks and FLOPs.

Imported only in trial processes (it imports torch at once). The spaces themselves, with the
range of every parameter, are in `edgetune.spaces.BUILTIN_SPACES`.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from edgetune.spaces import ParamValue

__all__ = [
    "BUILDERS",
    "HEAD_CHANNELS",
    "MOBILENET_PARAMS",
    "N_STAGES",
    "RESNET_PARAMS",
    "STEM_CHANNELS",
    "BasicBlock",
    "ChannelPrunable",
    "InvertedResidual",
    "ModelBuilder",
    "build_mobilenet",
    "build_resnet",
    "count_flops",
    "scale_channels",
]

#: Stages of both networks; stage 1 keeps the input's size, each later one halves it. Three
#: stages suit the 8x8 to 32x32 images these spaces are for (32 -> 8 at the end).
N_STAGES = 3
_STRIDES = (1, 2, 2)
#: MobileNet's stem and head widths, before `width_mult`.
STEM_CHANNELS = 16
HEAD_CHANNELS = 128
#: Defaults of the per-stage parameters when a trial's params lack them.
_MOBILENET_BLOCKS = (1, 2, 2)
_MOBILENET_CHANNELS = (16, 24, 32)
_MOBILENET_KERNEL = 3
_MOBILENET_EXPAND = 6
_RESNET_DEPTHS = (2, 2, 2)
_RESNET_WIDTHS = (16, 32, 64)

#: The parameter names each builder reads; anything else in `params` (lr, arch) is ignored.
MOBILENET_PARAMS = frozenset(
    {"width_mult", "resolution", "dropout"}
    | {
        f"s{i}_{knob}"
        for i in range(1, N_STAGES + 1)
        for knob in ("blocks", "channels", "kernel", "expand", "se")
    }
)
RESNET_PARAMS = frozenset(
    {"dropout"}
    | {f"s{i}_{knob}" for i in range(1, N_STAGES + 1) for knob in ("depth", "width")}
)


@runtime_checkable
class ChannelPrunable(Protocol):
    """A block whose hidden channels structured pruning can remove without changing its shape.

    A pruner reads `channel_importance`, picks the channels to keep and calls
    `keep_channels`; the block's input and output channels never change, so blocks are pruned
    one by one in any order. Pruning replaces parameters, so an optimizer must be created
    after it. A block with `hidden_channels == 0` has nothing to prune.
    """

    def channel_importance(self, criterion: str) -> torch.Tensor:
        """One score per hidden channel (higher: more important), 1-D, on the CPU.

        `criterion` is "l1" (L1 norm of the filter of the conv that produces the channel) or
        "bn" (|gamma| of the batch norm right after that conv, as in Network Slimming).
        """
        ...

    def keep_channels(self, keep: torch.Tensor) -> None:
        """Rebuild the block with only the hidden channels `keep` (a sorted 1-D long tensor).

        The convs, batch norms and squeeze-excitation are replaced by smaller ones holding
        the kept slices of their weights, biases and running statistics, so parameters and
        FLOPs really drop; a kept channel computes exactly what it did before.
        """
        ...

    @property
    def hidden_channels(self) -> int:
        """How many hidden channels the block has now (0: none it may prune)."""
        ...


class ModelBuilder(Protocol):
    """What `BUILDERS` holds: the network for a trial's params, sized for the data."""

    def __call__(
        self, params: Mapping[str, ParamValue], *, in_channels: int, n_classes: int
    ) -> nn.Module: ...


def scale_channels(channels: int, width_mult: float) -> int:
    """`channels * width_mult` rounded to the nearest multiple of 8 (halves up), at least 8."""
    return max(8, int(channels * width_mult / 8 + 0.5) * 8)


class SqueezeExcitation(nn.Module):
    """Channel attention: pool, squeeze to `squeeze` channels, ReLU, expand, sigmoid, scale."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = torch.sigmoid(self.expand(F.relu(self.reduce(scale))))
        return x * scale


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1, depthwise kxk, optional SE, linear project 1x1.

    Its hidden channels are the expanded ones (expand conv out, depthwise, SE, project in).
    With `expand == 1` there is no expand conv and the depthwise conv runs on the block's
    input, whose channels belong to the block before: then `hidden_channels` is 0 and the
    block is left alone by pruning. Pruning keeps the SE's squeeze width.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel: int, expand: int, stride: int,
        se: bool,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.residual = stride == 1 and in_channels == out_channels
        self.expand_conv: nn.Conv2d | None = None
        self.expand_bn: nn.BatchNorm2d | None = None
        if expand != 1:
            self.expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(
            hidden, hidden, kernel, stride=stride, padding=kernel // 2, groups=hidden,
            bias=False,
        )
        self.depthwise_bn = nn.BatchNorm2d(hidden)
        self.se = SqueezeExcitation(hidden, max(8, hidden // 4)) if se else None
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand_conv is not None and self.expand_bn is not None:
            out = F.relu6(self.expand_bn(self.expand_conv(out)))
        out = F.relu6(self.depthwise_bn(self.depthwise(out)))
        if self.se is not None:
            out = self.se(out)
        out = self.project_bn(self.project(out))
        return x + out if self.residual else out

    @property
    def hidden_channels(self) -> int:
        return 0 if self.expand_conv is None else self.depthwise.in_channels

    def channel_importance(self, criterion: str) -> torch.Tensor:
        if self.expand_conv is None or self.expand_bn is None:
            return torch.zeros(0)
        return _importance(self.expand_conv, self.expand_bn, criterion)

    def keep_channels(self, keep: torch.Tensor) -> None:
        keep = _check_keep(keep, self.hidden_channels)
        if self.expand_conv is None or self.expand_bn is None:
            return
        self.expand_conv = _slice_conv(self.expand_conv, out_keep=keep)
        self.expand_bn = _slice_bn(self.expand_bn, keep)
        self.depthwise = _slice_conv(self.depthwise, out_keep=keep, depthwise=True)
        self.depthwise_bn = _slice_bn(self.depthwise_bn, keep)
        if self.se is not None:
            self.se.reduce = _slice_conv(self.se.reduce, in_keep=keep)
            self.se.expand = _slice_conv(self.se.expand, out_keep=keep)
        self.project = _slice_conv(self.project, in_keep=keep)


class BasicBlock(nn.Module):
    """ResNet's block: two 3x3 conv + BN, added to the input (or its 1x1 conv + BN), ReLU.

    Its hidden channels are those between conv1/bn1 and conv2.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))

    @property
    def hidden_channels(self) -> int:
        return self.conv1.out_channels

    def channel_importance(self, criterion: str) -> torch.Tensor:
        return _importance(self.conv1, self.bn1, criterion)

    def keep_channels(self, keep: torch.Tensor) -> None:
        keep = _check_keep(keep, self.hidden_channels)
        self.conv1 = _slice_conv(self.conv1, out_keep=keep)
        self.bn1 = _slice_bn(self.bn1, keep)
        self.conv2 = _slice_conv(self.conv2, in_keep=keep)


class _Resize(nn.Module):
    """Bilinear resize to `size` x `size`; a no-op for inputs already of that size."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            # The tracer sees sizes as tensors and warns that the branch is frozen; that is
            # what we want: exports fix the input shape, and a same-size input then adds no
            # Resize op to the graph.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                same = bool(x.shape[-2] == self.size and x.shape[-1] == self.size)
        else:
            same = x.shape[-2] == self.size and x.shape[-1] == self.size
        if same:
            return x
        return F.interpolate(
            x, size=(self.size, self.size), mode="bilinear", align_corners=False
        )


def build_mobilenet(
    params: Mapping[str, ParamValue], *, in_channels: int, n_classes: int
) -> nn.Sequential:
    """The `mobilenet` space's network (MobileNetV2 / MnasNet style) for small images.

    Layout: [resize] -> stem (3x3 conv, BN, ReLU6) -> `N_STAGES` stages of `InvertedResidual`
    blocks (stride 2 in the first block of stages 2 and 3) -> head (1x1 conv to
    `HEAD_CHANNELS`, BN, ReLU6) -> global average pool -> [dropout] -> linear.

    Parameters, with their defaults when absent:
      - `width_mult` (1.0): scales every width (stem, stages, head) through `scale_channels`.
      - `resolution` (absent: the input's own size): the input is resized (bilinear) to
        `resolution` x `resolution` at the model's start, when its size differs.
      - `dropout` (0.0): dropout rate before the classifier; no layer at 0.
      - per stage i = 1..3: `s{i}_blocks` blocks (1, 2, 2), `s{i}_channels` output channels
        before `width_mult` (16, 24, 32), `s{i}_kernel` depthwise kernel (3), `s{i}_expand`
        expansion ratio (6), `s{i}_se` squeeze-excitation (false).
    """
    _check_sizes(in_channels, n_classes)
    width_mult = _read_float(params, "width_mult", 1.0, low=0.0)
    dropout = _read_dropout(params)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if "resolution" in params:
        layers["resize"] = _Resize(_read_int(params, "resolution", 0))
    channels = scale_channels(STEM_CHANNELS, width_mult)
    layers["stem"] = nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU6(inplace=True),
    )
    for i in range(N_STAGES):
        n_blocks = _read_int(params, f"s{i + 1}_blocks", _MOBILENET_BLOCKS[i])
        out = scale_channels(
            _read_int(params, f"s{i + 1}_channels", _MOBILENET_CHANNELS[i]),
            width_mult,
        )
        kernel = _read_int(params, f"s{i + 1}_kernel", _MOBILENET_KERNEL)
        if kernel % 2 == 0:
            raise ValueError(f"The value of `s{i + 1}_kernel` is {kernel}, but must be odd.")
        expand = _read_int(params, f"s{i + 1}_expand", _MOBILENET_EXPAND)
        se = _read_bool(params, f"s{i + 1}_se", False)
        layers[f"stage{i + 1}"] = nn.Sequential(*(
            InvertedResidual(
                channels if b == 0 else out, out, kernel=kernel, expand=expand,
                stride=_STRIDES[i] if b == 0 else 1, se=se,
            )
            for b in range(n_blocks)
        ))
        channels = out
    head = scale_channels(HEAD_CHANNELS, width_mult)
    layers["head"] = nn.Sequential(
        nn.Conv2d(channels, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6(inplace=True)
    )
    layers["pool"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if dropout > 0:
        layers["dropout"] = nn.Dropout(dropout)
    layers["classifier"] = nn.Linear(head, n_classes)
    return nn.Sequential(layers)


def build_resnet(
    params: Mapping[str, ParamValue], *, in_channels: int, n_classes: int
) -> nn.Sequential:
    """The `resnet` space's network: a CIFAR-style ResNet of `BasicBlock`s for small images.

    Layout: stem (3x3 conv to the first stage's width, BN, ReLU) -> `N_STAGES` stages of
    `BasicBlock`s (stride 2 in the first block of stages 2 and 3; a 1x1 conv + BN shortcut
    where the shape changes) -> global average pool -> [dropout] -> linear.

    Parameters, with their defaults when absent: per stage i = 1..3, `s{i}_depth` blocks
    (2, 2, 2) of `s{i}_width` channels (16, 32, 64); `dropout` (0.0) before the classifier.
    """
    _check_sizes(in_channels, n_classes)
    dropout = _read_dropout(params)
    widths = [
        _read_int(params, f"s{i + 1}_width", _RESNET_WIDTHS[i])
        for i in range(N_STAGES)
    ]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["stem"] = nn.Sequential(
        nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    )
    channels = widths[0]
    for i, width in enumerate(widths):
        depth = _read_int(params, f"s{i + 1}_depth", _RESNET_DEPTHS[i])
        layers[f"stage{i + 1}"] = nn.Sequential(*(
            BasicBlock(channels if b == 0 else width, width, stride=_STRIDES[i] if b == 0 else 1)
            for b in range(depth)
        ))
        channels = width
    layers["pool"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if dropout > 0:
        layers["dropout"] = nn.Dropout(dropout)
    layers["classifier"] = nn.Linear(channels, n_classes)
    return nn.Sequential(layers)


#: Space name (the value of its `arch` parameter) -> the builder of its network.
BUILDERS: dict[str, ModelBuilder] = {"mobilenet": build_mobilenet, "resnet": build_resnet}


def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """FLOPs of one forward pass on `example_input`, in eval mode, as torch counts them.

    `FlopCounterMode` counts 2 FLOPs per multiply-add of convolutions and matrix products
    (depthwise ones included) and nothing for norms, activations, pooling or resizing.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example_input)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def _importance(conv: nn.Conv2d, bn: nn.BatchNorm2d, criterion: str) -> torch.Tensor:
    with torch.no_grad():
        if criterion == "l1":
            return conv.weight.detach().abs().sum(dim=(1, 2, 3)).cpu()
        if criterion == "bn":
            return bn.weight.detach().abs().cpu()
    raise ValueError(f"The value of `criterion` is {criterion!r}, but must be 'l1' or 'bn'.")


def _check_keep(keep: torch.Tensor, hidden: int) -> torch.Tensor:
    if keep.dim() != 1 or keep.dtype != torch.long:
        raise ValueError(
            f"`keep` must be a 1-D long tensor, but has shape {tuple(keep.shape)} and dtype "
            f"{keep.dtype}."
        )
    if hidden == 0:
        if keep.numel():
            raise ValueError("The block has no prunable channels, so `keep` must be empty.")
        return keep
    if keep.numel() == 0:
        raise ValueError("`keep` is empty, but a block must keep at least one channel.")
    if keep.numel() > 1 and not bool((keep[1:] > keep[:-1]).all()):
        raise ValueError("`keep` must be sorted and without repeats.")
    if int(keep[0]) < 0 or int(keep[-1]) >= hidden:
        raise ValueError(
            f"`keep` holds {int(keep[0])}..{int(keep[-1])}, but must lie in [0, {hidden})."
        )
    return keep.cpu()


def _slice_conv(
    conv: nn.Conv2d, *, out_keep: torch.Tensor | None = None, in_keep: torch.Tensor | None = None,
    depthwise: bool = False,
) -> nn.Conv2d:
    """A new conv holding the kept output filters and/or input channels of `conv`."""
    weight = conv.weight.detach()
    bias = None if conv.bias is None else conv.bias.detach()
    if out_keep is not None:
        index = out_keep.to(weight.device)
        weight = weight.index_select(0, index)
        bias = None if bias is None else bias.index_select(0, index)
    if in_keep is not None:
        weight = weight.index_select(1, in_keep.to(weight.device))
    out_channels = weight.shape[0]
    in_channels = out_channels if depthwise else weight.shape[1] * conv.groups
    new = nn.Conv2d(
        in_channels, out_channels, _pair(conv.kernel_size), stride=_pair(conv.stride),
        padding=conv.padding if isinstance(conv.padding, str) else _pair(conv.padding),
        dilation=_pair(conv.dilation),
        groups=out_channels if depthwise else conv.groups, bias=bias is not None,
        padding_mode=conv.padding_mode, device=weight.device, dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None and new.bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(conv.weight.requires_grad)
    return new.train(conv.training)


def _pair(value: tuple[int, ...]) -> tuple[int, int]:
    return value[0], value[1]


def _slice_bn(bn: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    """A new batch norm holding the kept channels' affine parameters and running statistics."""
    reference = bn.weight if bn.weight is not None else bn.running_mean
    new = nn.BatchNorm2d(
        keep.numel(), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
        track_running_stats=bn.track_running_stats,
        device=None if reference is None else reference.device,
        dtype=None if reference is None else reference.dtype,
    )
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            old, fresh = getattr(bn, name), getattr(new, name)
            if old is not None and fresh is not None:
                fresh.copy_(old.index_select(0, keep.to(old.device)))
        if bn.num_batches_tracked is not None and new.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


def _check_sizes(in_channels: int, n_classes: int) -> None:
    if in_channels < 1 or n_classes < 1:
        raise ValueError(
            f"The values of `in_channels` and `n_classes` are {in_channels} and {n_classes}, "
            "but must be >= 1."
        )


def _read_int(params: Mapping[str, ParamValue], name: str, default: int) -> int:
    value = params.get(name, default)
    if (
        isinstance(value, bool) or not isinstance(value, int | float)
        or not math.isfinite(value) or value != int(value)
    ):
        raise ValueError(f"The value of `{name}` is {value!r}, but must be an integer.")
    if value < 1:
        raise ValueError(f"The value of `{name}` is {value!r}, but must be >= 1.")
    return int(value)


def _read_float(
    params: Mapping[str, ParamValue], name: str, default: float, *, low: float
) -> float:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > low:
        raise ValueError(f"The value of `{name}` is {value!r}, but must be a number > {low}.")
    return float(value)


def _read_dropout(params: Mapping[str, ParamValue]) -> float:
    value = params.get("dropout", 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"The value of `dropout` is {value!r}, but must be in [0, 1).")
    return float(value)


def _read_bool(params: Mapping[str, ParamValue], name: str, default: bool) -> bool:
    value = params.get(name, default)
    # A 0/1 also passes: a user may narrow the choice to a number in YAML or JSON.
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(f"The value of `{name}` is {value!r}, but must be true or false.")
