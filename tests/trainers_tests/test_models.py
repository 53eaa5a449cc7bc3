"""The `mobilenet` and `resnet` builders on random points of their spaces, and channel pruning."""

from __future__ import annotations

import math
import random
import re
import warnings
from collections.abc import Mapping

import pytest
import torch
from torch import nn

from edgetune.spaces import (
    BUILTIN_SPACES,
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    ParamValue,
)
from edgetune.trainers.models import (
    BUILDERS,
    HEAD_CHANNELS,
    MOBILENET_PARAMS,
    N_STAGES,
    RESNET_PARAMS,
    STEM_CHANNELS,
    BasicBlock,
    ChannelPrunable,
    InvertedResidual,
    build_mobilenet,
    build_resnet,
    count_flops,
)

SPACES = ("mobilenet", "resnet")
#: (in_channels, height, width) -> classes: digits, and CIFAR-sized colour images.
SHAPES = {(1, 8, 8): 10, (3, 32, 32): 3}
#: The defaults the builders' docstrings promise.
DEFAULTS: dict[str, dict[str, ParamValue]] = {
    "mobilenet": {
        "width_mult": 1.0, "dropout": 0.0,
        "s1_blocks": 1, "s2_blocks": 2, "s3_blocks": 2,
        "s1_channels": 16, "s2_channels": 24, "s3_channels": 32,
        **{f"s{i}_kernel": 3 for i in (1, 2, 3)},
        **{f"s{i}_expand": 6 for i in (1, 2, 3)},
        **{f"s{i}_se": False for i in (1, 2, 3)},
    },
    "resnet": {
        "dropout": 0.0,
        "s1_depth": 2, "s2_depth": 2, "s3_depth": 2,
        "s1_width": 16, "s2_width": 32, "s3_width": 64,
    },
}


@pytest.fixture(autouse=True)
def one_thread():
    # The models are tiny: with several threads, synchronisation costs more than the maths,
    # many times more on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sample(params: tuple[Param, ...], rng: random.Random) -> dict[str, ParamValue]:
    """One point of a space, drawn uniformly (log-uniformly where `log`)."""
    point: dict[str, ParamValue] = {}
    for p in params:
        if isinstance(p, FixedParam):
            point[p.name] = p.value
        elif isinstance(p, CategoricalParam):
            point[p.name] = rng.choice(p.choices)
        elif isinstance(p, IntParam):
            if p.log:
                value = round(math.exp(rng.uniform(math.log(p.low), math.log(p.high))))
                point[p.name] = min(max(value, p.low), p.high)
            else:
                point[p.name] = p.low + p.step * rng.randint(0, (p.high - p.low) // p.step)
        elif isinstance(p, FloatParam):
            if p.log:
                point[p.name] = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
            elif p.step is not None:
                point[p.name] = p.low + p.step * rng.randint(0, round((p.high - p.low) / p.step))
            else:
                point[p.name] = rng.uniform(p.low, p.high)
    return point


def samples(space: str, n: int, seed: int = 0) -> list[dict[str, ParamValue]]:
    rng = random.Random(seed)
    return [sample(BUILTIN_SPACES[space].params, rng) for _ in range(n)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_bn(c_in: int, c_out: int, kernel: int = 1, groups: int = 1) -> int:
    return c_in // groups * c_out * kernel * kernel + 2 * c_out


def scaled(channels: int, width_mult: float) -> int:
    return 8 * max(1, math.floor(channels * width_mult / 8 + 0.5))


def mobilenet_param_count(params: Mapping[str, ParamValue], c_in: int, n_classes: int) -> int:
    p = {**DEFAULTS["mobilenet"], **params}
    w = float(p["width_mult"])
    channels = scaled(STEM_CHANNELS, w)
    total = conv_bn(c_in, channels, 3)
    for i in range(1, N_STAGES + 1):
        out = scaled(int(p[f"s{i}_channels"]), w)
        expand, kernel = int(p[f"s{i}_expand"]), int(p[f"s{i}_kernel"])
        for _ in range(int(p[f"s{i}_blocks"])):
            hidden = channels * expand
            if expand != 1:
                total += conv_bn(channels, hidden)
            total += conv_bn(hidden, hidden, kernel, groups=hidden)
            if p[f"s{i}_se"]:
                squeeze = max(8, hidden // 4)
                total += 2 * hidden * squeeze + squeeze + hidden
            total += conv_bn(hidden, out)
            channels = out
    head = scaled(HEAD_CHANNELS, w)
    return total + conv_bn(channels, head) + head * n_classes + n_classes


def resnet_param_count(params: Mapping[str, ParamValue], c_in: int, n_classes: int) -> int:
    p = {**DEFAULTS["resnet"], **params}
    channels = int(p["s1_width"])
    total = conv_bn(c_in, channels, 3)
    for i in range(1, N_STAGES + 1):
        width = int(p[f"s{i}_width"])
        for b in range(int(p[f"s{i}_depth"])):
            total += conv_bn(channels, width, 3) + conv_bn(width, width, 3)
            if (i > 1 and b == 0) or channels != width:
                total += conv_bn(channels, width)
            channels = width
    return total + channels * n_classes + n_classes


PARAM_COUNTS = {"mobilenet": mobilenet_param_count, "resnet": resnet_param_count}


def prunable(model: nn.Module) -> list[ChannelPrunable]:
    return [m for m in model.modules() if isinstance(m, ChannelPrunable)]


def randomize_batch_norms(model: nn.Module, generator: torch.Generator) -> None:
    # Fresh batch norms are the identity in eval mode and would hide a wrongly sliced one.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


def test_each_network_space_fixes_arch_to_its_builder_and_lists_what_it_reads() -> None:
    for name, space in BUILTIN_SPACES.items():
        arch = [p for p in space.params if p.name == "arch"]
        assert len(arch) == 1 and isinstance(arch[0], FixedParam) and arch[0].value == name
    for name, reads in (("mobilenet", MOBILENET_PARAMS), ("resnet", RESNET_PARAMS)):
        names = {p.name for p in BUILTIN_SPACES[name].params}
        # dropout is read but left out of the spaces, as in `cnn`; a user may add it.
        assert names - {"arch", "lr"} == reads - {"dropout"}
        assert set(DEFAULTS[name]) == reads - {"resolution"}
        described = {re.sub(r"^s\d_", "s{i}_", n) for n in names - {"arch"}}
        assert all(f"`{n}`" in BUILTIN_SPACES[name].description for n in described)
    assert set(BUILDERS) == {"mobilenet", "resnet"}


@pytest.mark.parametrize("space", SPACES)
def test_forty_samples_of_each_space_build_and_classify_small_images(space: str) -> None:
    torch.manual_seed(0)
    for params in samples(space, 40):
        for (c, h, w), n_classes in SHAPES.items():
            model = BUILDERS[space](params, in_channels=c, n_classes=n_classes)
            out = model(torch.randn(2, c, h, w))
            assert out.shape == (2, n_classes), params
            assert torch.isfinite(out).all(), params


@pytest.mark.parametrize("space", SPACES)
def test_parameter_count_matches_the_hyperparameters(space: str) -> None:
    for params in [{}, DEFAULTS[space], *samples(space, 8, seed=1)]:
        for (c, _, _), n_classes in SHAPES.items():
            model = BUILDERS[space](params, in_channels=c, n_classes=n_classes)
            assert n_params(model) == PARAM_COUNTS[space](params, c, n_classes), params


def test_the_architecture_follows_the_params() -> None:
    params = {"s2_kernel": 7, "s3_expand": 1, "s1_se": True, "width_mult": 0.5, "dropout": 0.2}
    model = build_mobilenet(params, in_channels=1, n_classes=10)
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert [b.depthwise.kernel_size for b in blocks] == [(3, 3), (7, 7), (7, 7), (3, 3), (3, 3)]
    assert [b.se is not None for b in blocks] == [True, False, False, False, False]
    assert [b.hidden_channels for b in blocks] == [48, 48, 96, 0, 0]
    assert [b.depthwise.stride for b in blocks] == [(1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]
    assert [b.residual for b in blocks] == [True, False, True, False, True]
    assert any(isinstance(m, nn.Dropout) and m.p == 0.2 for m in model.modules())
    resnet = build_resnet({"s1_depth": 1, "s2_depth": 3, "s3_width": 40}, in_channels=3,
                          n_classes=3)
    basic = [m for m in resnet.modules() if isinstance(m, BasicBlock)]
    assert [b.conv1.out_channels for b in basic] == [16, 32, 32, 32, 40, 40]
    assert [isinstance(b.shortcut, nn.Identity) for b in basic] == [
        True, False, True, True, False, True
    ]


def test_resolution_resizes_the_input_only_when_it_differs() -> None:
    x = torch.randn(1, 1, 8, 8)
    flops = {
        r: count_flops(build_mobilenet({"resolution": r}, in_channels=1, n_classes=10), x)
        for r in (8, 16, 32)
    }
    assert flops[8] == count_flops(build_mobilenet({}, in_channels=1, n_classes=10), x)
    assert flops[8] < flops[16] < flops[32]


@pytest.mark.parametrize("bad", [
    {"s1_kernel": 4}, {"s2_blocks": 0}, {"s3_channels": 2.5}, {"width_mult": 0},
    {"dropout": 1.0}, {"s1_se": "yes"}, {"s1_expand": True},
])
def test_the_builder_refuses_values_it_cannot_build(bad: dict[str, ParamValue]) -> None:
    with pytest.raises(ValueError, match="The value of `"):
        build_mobilenet(bad, in_channels=1, n_classes=10)


@pytest.mark.parametrize("space", SPACES)
def test_samples_export_to_valid_onnx(space: str, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    for i, ((c, h, w), n_classes) in enumerate(SHAPES.items()):
        params = samples(space, 1, seed=10 + i)[0]
        model = BUILDERS[space](params, in_channels=c, n_classes=n_classes).eval()
        x = torch.randn(1, c, h, w)
        path = tmp_path / f"{space}-{i}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"])
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        ops = {node.op_type for node in proto.graph.node}
        assert ("Resize" in ops) == (params.get("resolution", h) != h), params
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(["output"], {"input": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("space", SPACES)
def test_pruning_every_block_shrinks_the_model_and_it_still_trains(space: str) -> None:
    rng = random.Random(2)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    for k, params in enumerate(samples(space, 10, seed=2)):
        model = BUILDERS[space](params, in_channels=3, n_classes=5)
        blocks = [b for b in prunable(model) if b.hidden_channels > 1]
        if not blocks:
            continue
        before_params, before_flops = n_params(model), count_flops(model, x)
        for b in blocks:
            score = b.channel_importance("l1" if k % 2 else "bn")
            assert score.shape == (b.hidden_channels,)
            n_keep = rng.randint(1, b.hidden_channels - 1)
            keep = score.argsort(descending=True)[:n_keep].sort().values
            b.keep_channels(keep)
            assert b.hidden_channels == n_keep
        assert n_params(model) < before_params
        assert count_flops(model, x) < before_flops
        assert model.training  # count_flops puts the training mode back
        out = model(x)
        assert out.shape == (2, 5) and torch.isfinite(out).all()
        out.square().mean().backward()
        assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("space", SPACES)
def test_keeping_every_channel_changes_nothing(space: str) -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 16, 16, generator=generator)
    for params in samples(space, 3, seed=3):
        model = BUILDERS[space](params, in_channels=3, n_classes=5)
        randomize_batch_norms(model, generator)
        model.eval()
        with torch.no_grad():
            expected = model(x)
            for b in prunable(model):
                b.keep_channels(torch.arange(b.hidden_channels))
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("space", SPACES)
def test_removing_silenced_channels_keeps_the_outputs(space: str) -> None:
    # A channel whose batch norm has zero scale and shift is exactly zero after the ReLU, so
    # removing it must not change the outputs: this checks each kept slice lines up.
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 16, 16, generator=generator)
    for params in samples(space, 3, seed=4):
        model = BUILDERS[space](params, in_channels=3, n_classes=5)
        randomize_batch_norms(model, generator)
        model.eval()
        plan = []
        for b in prunable(model):
            if b.hidden_channels < 2:
                continue
            drop = torch.randperm(b.hidden_channels, generator=generator)[
                : b.hidden_channels // 2
            ]
            mask = torch.ones(b.hidden_channels, dtype=torch.bool)
            mask[drop] = False
            bn = b.depthwise_bn if isinstance(b, InvertedResidual) else b.bn1
            with torch.no_grad():
                bn.weight[drop] = 0.0
                bn.bias[drop] = 0.0
            plan.append((b, mask.nonzero().flatten()))
        with torch.no_grad():
            expected = model(x)
            for b, keep in plan:
                b.keep_channels(keep)
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_importance_follows_the_criterion() -> None:
    model = build_mobilenet({"s1_expand": 1, "s2_expand": 3}, in_channels=1, n_classes=10)
    fixed, *blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert fixed.hidden_channels == 0 and fixed.channel_importance("l1").numel() == 0
    fixed.keep_channels(torch.zeros(0, dtype=torch.long))  # nothing to prune: a no-op
    with pytest.raises(ValueError, match="no prunable channels"):
        fixed.keep_channels(torch.tensor([0]))
    block = blocks[0]
    assert block.expand_conv is not None and block.expand_bn is not None
    torch.testing.assert_close(
        block.channel_importance("l1"), block.expand_conv.weight.detach().abs().sum((1, 2, 3))
    )
    torch.testing.assert_close(
        block.channel_importance("bn"), block.expand_bn.weight.detach().abs()
    )
    with pytest.raises(ValueError, match="`criterion`"):
        block.channel_importance("l2")
    for keep, message in [
        (torch.tensor([2, 1]), "sorted"),
        (torch.tensor([0, 0]), "sorted"),
        (torch.tensor([0, block.hidden_channels]), "must lie in"),
        (torch.zeros(0, dtype=torch.long), "at least one"),
        (torch.tensor([0.0, 1.0]), "long tensor"),
    ]:
        with pytest.raises(ValueError, match=message):
            block.keep_channels(keep)
