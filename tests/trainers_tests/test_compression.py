"""Tests for pruning, quantization and distillation on a small CNN trained on sklearn's digits."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgetune.trainers.compression import (
    ChannelPrunable,
    bn_l1_penalty,
    channel_prune,
    distillation_loss,
    magnitude_prune,
    onnx_accuracy,
    prepare_qat,
    quantize_onnx,
    sparsity,
    strip_qat,
    teacher_logits_from_onnx,
)

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

#: Accuracy (in points, on the 450 validation digits) an int8 model may lose against fp32.
INT8_TOLERANCE = 0.02


class Block(nn.Module):
    """conv(in -> hidden) - bn - relu - conv(hidden -> out): the hidden channels are prunable."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(hidden, out_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn1(self.conv1(x))))

    @property
    def hidden_channels(self) -> int:
        return self.conv1.out_channels

    def channel_importance(self, criterion: str) -> torch.Tensor:
        if criterion == "bn":
            return self.bn1.weight.detach().abs()
        return self.conv1.weight.detach().abs().sum(dim=(1, 2, 3))

    def keep_channels(self, keep: torch.Tensor) -> None:
        n = len(keep)
        conv1 = nn.Conv2d(self.conv1.in_channels, n, 3, padding=1, bias=False)
        conv1.weight.data = self.conv1.weight.data[keep].clone()
        bn1 = nn.BatchNorm2d(n)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn1, name).data = getattr(self.bn1, name).data[keep].clone()
        conv2 = nn.Conv2d(n, self.conv2.out_channels, 3, padding=1, bias=False)
        conv2.weight.data = self.conv2.weight.data[:, keep].clone()
        self.conv1, self.bn1, self.conv2 = conv1, bn1, conv2


def tiny_cnn(width: int = 16) -> nn.Sequential:
    return nn.Sequential(
        Block(1, width, width), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        Block(width, 2 * width, 2 * width), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10),
    )


@dataclass
class Digits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def train(model: nn.Module, data: Digits, *, epochs: int, lr: float, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def export(model: nn.Module, path: Path, batch: int = 1, dynamic: bool = False) -> Path:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.zeros(batch, 1, 8, 8),), str(path), dynamo=False,
            input_names=["input"], output_names=["output"], opset_version=17,
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None,
        )
    return path


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # The model is tiny: a second thread gains nothing, and on a busy 2-core machine torch's
    # spinning threads made training 10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> Digits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y.astype(np.int64), test_size=0.25, random_state=0, stratify=y
    )
    return Digits(x_train, y_train, x_val, y_val)


@pytest.fixture(scope="module")
def trained(digits: Digits) -> nn.Module:
    torch.manual_seed(0)
    model = tiny_cnn()
    train(model, digits, epochs=12, lr=1e-2)
    accuracy = float((torch_logits(model, digits.x_val).argmax(1) == digits.y_val).mean())
    assert accuracy > 0.95, f"the test CNN only reached {accuracy:.3f}"
    return model


@pytest.fixture
def model(trained: nn.Module) -> nn.Module:
    return copy.deepcopy(trained)


@pytest.fixture(scope="module")
def fp32_onnx(trained: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(copy.deepcopy(trained), tmp_path_factory.mktemp("fp32") / "model.onnx")


def test_test_cnn_blocks_implement_the_protocol(model: nn.Module) -> None:
    blocks = [m for m in model.modules() if isinstance(m, ChannelPrunable)]
    assert [b.hidden_channels for b in blocks] == [16, 32]


# --- magnitude pruning --------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.3, 0.7])
def test_magnitude_prune_reaches_target_sparsity_and_still_exports(
    target: float, model: nn.Module, digits: Digits, tmp_path: Path
) -> None:
    assert sparsity(model) < 0.01
    magnitude_prune(model, target)

    assert sparsity(model) == pytest.approx(target, abs=0.01)
    # The pruning re-parametrisation is gone: weights are plain parameters holding zeros.
    assert not any(name.endswith(("_orig", "_mask")) for name, _ in model.named_parameters())
    assert not any(name.endswith("_mask") for name, _ in model.named_buffers())
    path = export(model, tmp_path / "pruned.onnx")
    logits = teacher_logits_from_onnx(path, digits.x_val[:16], batch=1)
    np.testing.assert_allclose(logits, torch_logits(model, digits.x_val[:16]), atol=1e-4)


def test_magnitude_prune_is_global_not_per_layer(model: nn.Module) -> None:
    magnitude_prune(model, 0.5)
    per_layer = [
        float((m.weight == 0).float().mean()) for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    assert max(per_layer) - min(per_layer) > 0.05  # one threshold, so layers differ


def test_magnitude_prune_rejects_bad_sparsity(model: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"`sparsity` is 1\.0"):
        magnitude_prune(model, 1.0)
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        magnitude_prune(nn.Sequential(nn.ReLU()), 0.5)


# --- channel pruning ----------------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["l1", "bn"])
def test_channel_prune_shrinks_params_and_onnx_file(
    criterion: str, model: nn.Module, digits: Digits, fp32_onnx: Path, tmp_path: Path
) -> None:
    before = n_params(model)
    removed = channel_prune(model, 0.5, criterion)

    hidden = [m.hidden_channels for m in model.modules() if isinstance(m, ChannelPrunable)]
    assert removed == 48 - sum(hidden)
    assert removed >= 20
    assert all(h % 4 == 0 and h >= 4 for h in hidden)
    assert n_params(model) < before
    path = export(model, tmp_path / "pruned.onnx")
    assert path.stat().st_size < 0.8 * fp32_onnx.stat().st_size
    logits = teacher_logits_from_onnx(path, digits.x_val[:16], batch=1)
    np.testing.assert_allclose(logits, torch_logits(model, digits.x_val[:16]), atol=1e-4)


def test_l1_criterion_prunes_each_block_by_the_ratio(model: nn.Module) -> None:
    assert channel_prune(model, 0.25, "l1") == 4 + 8
    hidden = [m.hidden_channels for m in model.modules() if isinstance(m, ChannelPrunable)]
    assert hidden == [12, 24]


def test_bn_criterion_uses_one_global_threshold(model: nn.Module) -> None:
    first, second = (m for m in model.modules() if isinstance(m, ChannelPrunable))
    with torch.no_grad():  # as if the slimming penalty had shrunk the first block's scales
        first.bn1.weight.mul_(1e-3)
    kept_scales = second.bn1.weight.detach().clone()

    assert channel_prune(model, 0.25, "bn") == 12  # a quarter of 48 channels
    assert first.hidden_channels == 4
    assert second.hidden_channels == 32
    torch.testing.assert_close(second.bn1.weight.detach(), kept_scales)


def test_channel_prune_keeps_the_most_important_channels(model: nn.Module) -> None:
    first = next(m for m in model.modules() if isinstance(m, ChannelPrunable))
    scores = first.channel_importance("l1")
    best = set(torch.topk(scores, 8).indices.tolist())
    best_weights = first.conv1.weight.detach()[sorted(best)].clone()

    channel_prune(model, 0.5, "l1")

    assert first.hidden_channels == 8
    torch.testing.assert_close(first.conv1.weight.detach(), best_weights)


def test_channel_prune_rounds_small_blocks_and_keeps_one() -> None:
    model = nn.Sequential(Block(1, 3, 2))
    assert channel_prune(model, 0.9, "l1") == 2  # 0.3 channels rounds up to the minimum of 1
    assert model[0].hidden_channels == 1


def test_channel_prune_zero_ratio_changes_nothing(model: nn.Module) -> None:
    assert channel_prune(model, 0.0, "bn") == 0


def test_channel_prune_needs_a_prunable_block() -> None:
    with pytest.raises(ValueError, match="no channel-prunable block"):
        channel_prune(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), 0.5)


def test_channel_prune_rejects_bad_arguments(model: nn.Module) -> None:
    with pytest.raises(ValueError, match="`criterion` is 'taylor'"):
        channel_prune(model, 0.5, "taylor")
    with pytest.raises(ValueError, match=r"`ratio` is 1\.0"):
        channel_prune(model, 1.0)


def test_bn_l1_penalty_is_the_sum_of_bn_scales_and_has_a_gradient(model: nn.Module) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    penalty = bn_l1_penalty(model)
    expected = sum(float(bn.weight.detach().abs().sum()) for bn in bns)
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    assert all(bn.weight.grad is not None for bn in bns)
    assert float(bn_l1_penalty(nn.Linear(2, 2))) == 0.0


# --- quantization ----------------------------------------------------------------------------


def test_an_unknown_quantization_mode_is_refused(fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'int4', but must be one of 'fp32', 'fp16'"):
        quantize_onnx(fp32_onnx, tmp_path / "q.onnx", "int4")


def test_int8_static_keeps_accuracy_and_shrinks_the_file(
    digits: Digits, fp32_onnx: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "int8.onnx"
    quantize_onnx(fp32_onnx, dst, "int8-static", digits.x_train[:256])

    fp32 = onnx_accuracy(fp32_onnx, digits.x_val, digits.y_val)
    int8 = onnx_accuracy(dst, digits.x_val, digits.y_val)
    assert int8 >= fp32 - INT8_TOLERANCE, f"fp32 {fp32:.4f}, int8-static {int8:.4f}"
    assert dst.stat().st_size < 0.5 * fp32_onnx.stat().st_size
    ops = {node.op_type for node in _load(dst).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


@pytest.mark.parametrize("mode", ["fp16", "int8-dynamic", "fp32"])
def test_other_modes_run_and_agree_with_fp32(
    mode: str, digits: Digits, fp32_onnx: Path, tmp_path: Path
) -> None:
    dst = tmp_path / f"{mode}.onnx"
    quantize_onnx(fp32_onnx, dst, mode, None)

    reference = teacher_logits_from_onnx(fp32_onnx, digits.x_val, batch=1)
    logits = teacher_logits_from_onnx(dst, digits.x_val, batch=1)
    assert logits.dtype == np.float32  # fp16 keeps float32 inputs and outputs
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.97
    if mode == "fp16":
        assert dst.stat().st_size < 0.6 * fp32_onnx.stat().st_size
    if mode == "int8-dynamic":
        ops = {node.op_type for node in _load(dst).graph.node}
        assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}


def test_quantize_onnx_rejects_unknown_modes_and_missing_calibration(
    fp32_onnx: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"'int4'.*'fp32', 'fp16', 'int8-dynamic'"):
        quantize_onnx(fp32_onnx, tmp_path / "x.onnx", "int4", None)
    with pytest.raises(ValueError, match="needs calibration"):
        quantize_onnx(fp32_onnx, tmp_path / "x.onnx", "int8-static", None)
    with pytest.raises(ValueError, match="shaped"):
        quantize_onnx(fp32_onnx, tmp_path / "x.onnx", "int8-static", np.zeros((4, 1, 9, 9)))


def test_qat_fine_tunes_and_gives_a_runnable_int8_model(
    model: nn.Module, digits: Digits, fp32_onnx: Path, tmp_path: Path
) -> None:
    original = model
    fake = prepare_qat(model)
    conv = fake[0].conv1
    # The weight the layer sees is rounded to at most 255 levels per output channel.
    assert all(len(torch.unique(w)) <= 255 for w in conv.weight.detach())
    train(fake, digits, epochs=2, lr=1e-3)
    qat_torch = float((torch_logits(fake, digits.x_val).argmax(1) == digits.y_val).mean())

    plain = strip_qat(fake, original)
    assert plain is original
    assert not any("parametrizations" in name for name, _ in plain.named_parameters())
    assert not any(m._forward_pre_hooks for m in plain.modules())
    src = export(plain, tmp_path / "qat-fp32.onnx")
    dst = tmp_path / "qat-int8.onnx"
    quantize_onnx(src, dst, "qat", digits.x_train[:256])

    fp32 = onnx_accuracy(fp32_onnx, digits.x_val, digits.y_val)
    qat = onnx_accuracy(dst, digits.x_val, digits.y_val)
    assert qat >= fp32 - INT8_TOLERANCE, f"fp32 {fp32:.4f}, qat int8 {qat:.4f}"
    assert qat == pytest.approx(qat_torch, abs=INT8_TOLERANCE)


def test_strip_qat_loads_trained_weights_into_another_copy(model: nn.Module) -> None:
    other = copy.deepcopy(model)
    fake = prepare_qat(model)
    with torch.no_grad():
        fake[-1].parametrizations.weight.original.add_(1.0)
    plain = strip_qat(fake, other)
    assert plain is other
    torch.testing.assert_close(other[-1].weight, model[-1].weight)


def test_prepare_qat_twice_is_refused(model: nn.Module) -> None:
    prepare_qat(model)
    with pytest.raises(ValueError, match="already"):
        prepare_qat(model)


def _load(path: Path) -> object:
    import onnx

    return onnx.load(str(path))


# --- distillation --------------------------------------------------------------------------


def _logits(seed: int, n: int = 8, classes: int = 10) -> torch.Tensor:
    return torch.randn(n, classes, generator=torch.Generator().manual_seed(seed))


def test_distillation_loss_is_cross_entropy_when_alpha_is_zero() -> None:
    student, teacher, labels = _logits(0), _logits(1), torch.arange(8) % 10
    loss = distillation_loss(student, teacher, labels, temperature=4.0, alpha=0.0)
    torch.testing.assert_close(loss, F.cross_entropy(student, labels))


def test_distillation_kl_part_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    student, labels = _logits(0), torch.arange(8) % 10
    same = distillation_loss(student, student.clone(), labels, temperature=3.0, alpha=1.0)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    other = distillation_loss(student, _logits(1), labels, temperature=3.0, alpha=1.0)
    assert float(other) > 0.0


def test_distillation_loss_matches_hinton_formula_and_flows_into_the_student_only() -> None:
    student = _logits(0).requires_grad_()
    teacher = _logits(1).requires_grad_()
    labels = torch.arange(8) % 10
    t, alpha = 2.0, 0.7
    loss = distillation_loss(student, teacher, labels, temperature=t, alpha=alpha)

    p_teacher = F.softmax(teacher.detach() / t, dim=1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(student.detach() / t, dim=1))).sum(1)
    expected = alpha * t * t * kl.mean() + (1 - alpha) * F.cross_entropy(student.detach(), labels)
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert teacher.grad is None


def test_distillation_loss_rejects_bad_arguments() -> None:
    student, labels = _logits(0), torch.arange(8) % 10
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, student, labels, temperature=0.0, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(student, student, labels, temperature=1.0, alpha=1.5)


@pytest.mark.parametrize(("batch_dim", "dynamic"), [(1, False), (4, False), (1, True)])
def test_teacher_logits_from_onnx_match_torch(
    batch_dim: int, dynamic: bool, model: nn.Module, digits: Digits, tmp_path: Path
) -> None:
    path = export(model, tmp_path / "teacher.onnx", batch=batch_dim, dynamic=dynamic)
    x = digits.x_val[:30]  # not a multiple of 4: the last fixed-size batch is padded

    logits = teacher_logits_from_onnx(path, x, batch=8)

    assert logits.shape == (30, 10)
    np.testing.assert_allclose(logits, torch_logits(model, x), atol=1e-4)


def test_onnx_accuracy_takes_torch_tensors(digits: Digits, fp32_onnx: Path) -> None:
    from_numpy = onnx_accuracy(fp32_onnx, digits.x_val, digits.y_val)
    from_torch = onnx_accuracy(
        fp32_onnx, torch.from_numpy(digits.x_val), torch.from_numpy(digits.y_val)
    )
    assert from_numpy == from_torch > 0.95
