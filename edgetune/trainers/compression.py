"""Compression applied for real inside a trial: pruning, quantization and distillation.

Pruning and quantization-aware training change the torch model before it is exported; the
post-training quantization modes rewrite the exported ONNX file, so the artifact a device
measures is the compressed model itself.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize, prune

from edgetune.trainers.knobs import PRUNE_CRITERIA, QUANTIZATION
from edgetune.trainers.models import ChannelPrunable

__all__ = [
    "ChannelPrunable",
    "bn_l1_penalty",
    "channel_prune",
    "distillation_loss",
    "magnitude_prune",
    "onnx_accuracy",
    "prepare_qat",
    "quantize_onnx",
    "sparsity",
    "strip_qat",
    "teacher_logits_from_onnx",
]

logger = logging.getLogger(__name__)


_PRUNABLE_LAYERS = (nn.Conv2d, nn.Linear)
#: Hidden widths are kept at multiples of this: int8 and fp32 kernels on CPUs (and most NPUs)
#: process channels in vectors of 4, 8 or 16, so odd widths waste the remainder of a vector.
_CHANNEL_MULTIPLE = 4


# --- unstructured pruning -------------------------------------------------------------------


def _weighted_layers(model: nn.Module) -> list[nn.Conv2d | nn.Linear]:
    return [m for m in model.modules() if isinstance(m, _PRUNABLE_LAYERS)]


def magnitude_prune(model: nn.Module, sparsity: float) -> None:
    """Zero the `sparsity` fraction of smallest-magnitude Conv2d/Linear weights, in place.

    The threshold is global over all those weights (one layer may lose more than another),
    as in `torch.nn.utils.prune.global_unstructured` with `L1Unstructured`. The pruning
    re-parametrisation is removed afterwards, so the zeros are baked into plain `weight`
    parameters and the model exports as usual. Biases are left alone.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"The value of `sparsity` is {sparsity}, but must be in [0, 1).")
    layers = _weighted_layers(model)
    if not layers:
        raise ValueError("The model has no Conv2d or Linear layer to prune.")
    if sparsity == 0.0:
        return
    targets = [(layer, "weight") for layer in layers]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    for layer, name in targets:
        prune.remove(layer, name)


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights among all Conv2d/Linear weights (0.0 if none)."""
    weights = [layer.weight for layer in _weighted_layers(model)]
    total = sum(w.numel() for w in weights)
    if total == 0:
        return 0.0
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / total


# --- structured (channel) pruning ------------------------------------------------------------


def channel_prunable(model: torch.nn.Module) -> bool:
    """Whether `channel_prune` finds anything to remove (a block with hidden channels)."""
    return bool(_prunable_blocks(model))


def _prunable_blocks(model: nn.Module) -> list[ChannelPrunable]:
    return [
        m for m in model.modules() if isinstance(m, ChannelPrunable) and m.hidden_channels > 0
    ]


def _keep_count(n: int, wanted: float) -> int:
    """Channels to keep out of `n` when `wanted` (a real number) would be kept exactly.

    Rounded to the nearest multiple of 4, but never below 4 (nor below 1 for blocks of 4
    channels or fewer, which are rounded to the nearest integer) and never above `n`.
    """
    if wanted >= n:
        return n
    if n <= _CHANNEL_MULTIPLE:
        return max(1, math.floor(wanted + 0.5))
    rounded = _CHANNEL_MULTIPLE * math.floor(wanted / _CHANNEL_MULTIPLE + 0.5)
    return min(n, max(_CHANNEL_MULTIPLE, rounded))


def channel_prune(model: nn.Module, ratio: float, criterion: str = "l1") -> int:
    """Physically remove about `ratio` of the hidden channels of every prunable block.

    Blocks are the modules implementing `ChannelPrunable` with `hidden_channels > 0`.

    - "l1": each block loses `ratio` of its own channels, those with the smallest scores.
    - "bn": Network Slimming (Liu et al., 2017): one global threshold over the BN scales of
      all blocks removes the `ratio` fraction of smallest scales overall, so a block whose
      gammas were driven to zero (see `bn_l1_penalty`) loses more than the others.

    Then each block's keep count is rounded by `_keep_count`: to the nearest multiple of 4,
    at least 4 (at least 1 in blocks of 4 or fewer channels), at most what it has. The
    highest-scoring channels are kept. Returns the number of channels removed.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"The value of `ratio` is {ratio}, but must be in [0, 1).")
    if criterion not in PRUNE_CRITERIA:
        raise ValueError(
            f"The value of `criterion` is {criterion!r}, but must be one of "
            f"{', '.join(repr(c) for c in PRUNE_CRITERIA)}."
        )
    blocks = _prunable_blocks(model)
    if not blocks:
        raise ValueError(
            "The model has no channel-prunable block (a module implementing "
            "edgetune.trainers.compression.ChannelPrunable with hidden_channels > 0), "
            "so channel pruning cannot be applied to it."
        )
    with torch.no_grad():
        scores = [b.channel_importance(criterion).detach().flatten().float().cpu() for b in blocks]
    for block, s in zip(blocks, scores, strict=True):
        if s.numel() != block.hidden_channels:
            raise ValueError(
                f"{type(block).__name__}.channel_importance gave {s.numel()} scores for "
                f"{block.hidden_channels} hidden channels."
            )

    if criterion == "bn":
        # Global ranking rather than a float threshold, so ties cannot prune more than asked.
        everything = torch.cat(scores)
        n_drop = math.floor(ratio * everything.numel() + 0.5)
        dropped = torch.zeros(everything.numel(), dtype=torch.bool)
        dropped[torch.argsort(everything, stable=True)[:n_drop]] = True
        wanted = [float(n - int(d.sum())) for n, d in _split(dropped, scores)]
    else:
        wanted = [(1.0 - ratio) * s.numel() for s in scores]

    removed = 0
    for block, s, w in zip(blocks, scores, wanted, strict=True):
        n = s.numel()
        keep = _keep_count(n, w)
        if keep == n:
            continue
        # topk's order is by score; keep_channels wants the surviving indices in order.
        indices = torch.topk(s, keep).indices.sort().values.to(torch.long)
        block.keep_channels(indices)
        removed += n - keep
    logger.debug("channel pruning (%s, ratio %.2f) removed %d channels", criterion, ratio, removed)
    return removed


def _split(flags: torch.Tensor, like: list[torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
    start = 0
    for s in like:
        yield s.numel(), flags[start : start + s.numel()]
        start += s.numel()


def bn_l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |gamma| over all affine BatchNorm2d layers: Network Slimming's regulariser.

    A trainer adds `weight * bn_l1_penalty(model)` to the loss (weights around 1e-5 to 1e-4
    in the paper) so that unimportant channels get small scales before `channel_prune`.
    """
    gammas = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.affine]
    if not gammas:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return torch.zeros((), device=device)
    return torch.stack([g.abs().sum() for g in gammas]).sum()


# --- quantization-aware training --------------------------------------------------------------
#
# Hand-written fake quantization rather than torch.ao's FX QAT: torch.ao.quantization warns
# that it is deprecated (torch 2.13), and FX QAT fuses conv+bn into modules whose trained
# weights would have to be copied back into the user's blocks. Here the user's modules stay
# as they are: a parametrization fake-quantizes each Conv2d/Linear weight and a forward
# pre-hook each input, and `strip_qat` removes both, leaving the float weights that learnt
# to live with rounding.
#
# The scheme is the one `quantize_onnx(..., "int8-static")` applies in onnxruntime: weights
# symmetric per output channel in [-127, 127]; activations asymmetric per tensor on 256 levels
# from min/max ranges (uint8, as there). Per-channel
# symmetric rounding is invariant to scaling an output channel, so it is the same whether BN
# is folded into the conv (as the ONNX export does) or not (as during training).


class _WeightFakeQuant(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        reduce_dims = tuple(range(1, weight.dim()))
        absmax = weight.detach().abs().amax(dim=reduce_dims)
        scale = (absmax / 127.0).clamp(min=1e-12).float()
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -127, 127)


class _InputFakeQuant(nn.Module):
    """Forward pre-hook: observes the input's range (moving average) and fake-quantizes it."""

    low: torch.Tensor
    high: torch.Tensor

    def __init__(self, averaging_constant: float = 0.01) -> None:
        super().__init__()
        self.averaging_constant = averaging_constant
        self.register_buffer("low", torch.tensor(float("inf")))
        self.register_buffer("high", torch.tensor(float("-inf")))

    def forward(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        (x, *rest) = args
        if self.training:
            with torch.no_grad():
                low, high = x.detach().min().float(), x.detach().max().float()
                if torch.isinf(self.low):
                    self.low.copy_(low)
                    self.high.copy_(high)
                else:
                    self.low.lerp_(low, self.averaging_constant)
                    self.high.lerp_(high, self.averaging_constant)
        if torch.isinf(self.low):  # never observed: nothing to quantize against yet
            return args
        # The range must hold 0 exactly, for zero padding (as onnxruntime's calibration does).
        # Tensors, not Python numbers, so a model on a GPU does not sync on every layer.
        low, high = self.low.clamp(max=0.0), self.high.clamp(min=0.0)
        scale = ((high - low) / 255.0).clamp(min=1e-12)
        zero_point = torch.round(-low / scale).clamp(0, 255).to(torch.int32)
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255), *rest)


_QAT_ATTR = "_edgetune_qat_input"


def prepare_qat(model: nn.Module) -> nn.Module:
    """Insert int8 fake quantization into every Conv2d/Linear of `model`, in place.

    Fine-tune the returned model (the same object) as usual: the forward pass rounds
    weights and layer inputs as int8 inference will, and gradients pass straight through
    the rounding. Then call `strip_qat` before exporting.
    """
    layers = _weighted_layers(model)
    if not layers:
        raise ValueError("The model has no Conv2d or Linear layer to quantize.")
    for layer in layers:
        if hasattr(layer, _QAT_ATTR):
            raise ValueError("prepare_qat was already applied to this model.")
        parametrize.register_parametrization(layer, "weight", _WeightFakeQuant())
        observer = _InputFakeQuant()
        # A child module, so a deepcopy of the model keeps each hook tied to its own layer.
        layer.add_module(_QAT_ATTR, observer)
        layer.register_forward_pre_hook(observer)
    return model


def strip_qat(qat_model: nn.Module, original_model: nn.Module | None = None) -> nn.Module:
    """Undo `prepare_qat` and return a plain float model, ready to export.

    The fake quantization is removed from `qat_model` in place; the float weights trained
    under it are kept unrounded. `prepare_qat` works in place, so `original_model` is
    normally the same object; if it is another copy of the architecture, the trained weights
    are loaded into it and it is returned instead. Quantizing happens at the ONNX level
    (mode "qat", the same as "int8-static"), where onnxruntime's calibration sets the
    activation ranges.
    """
    for layer in _weighted_layers(qat_model):
        observer = getattr(layer, _QAT_ATTR, None)
        if observer is None:
            continue
        for key, hook in list(layer._forward_pre_hooks.items()):
            if hook is observer:
                del layer._forward_pre_hooks[key]
        delattr(layer, _QAT_ATTR)
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    if original_model is None or original_model is qat_model:
        return qat_model
    original_model.load_state_dict(qat_model.state_dict())
    return original_model


# --- post-training quantization of the exported ONNX model -------------------------------------


def quantize_onnx(
    src: Path, dst: Path, mode: str, calibration: np.ndarray | None = None
) -> None:
    """Write `src` (a float32 ONNX model) to `dst` quantized as `mode` says.

    - "fp32": a copy.
    - "fp16": weights and compute in float16, inputs and outputs still float32
      (`onnxruntime.transformers.float16`).
    - "int8-dynamic": int8 weights of MatMul/Gemm layers, activations quantized at run time
      (`quantize_dynamic`). Convolutions stay float: onnxruntime's CPU ConvInteger has no
      kernel for int8 weights, so dynamic quantization is meant for dense layers.
    - "int8-static" and "qat": QDQ graph with int8 weights (symmetric, per channel) and
      uint8 activations whose ranges come from running `calibration` through the model
      (`quantize_static`, min/max calibration). `calibration` is a float32 array of N
      samples shaped like the model's input without its batch dimension.
    """
    if mode not in QUANTIZATION:
        raise ValueError(
            f"The value of `mode` is {mode!r}, but must be one of "
            f"{', '.join(repr(m) for m in QUANTIZATION)}."
        )
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "fp32":
        shutil.copyfile(src, dst)
    elif mode == "fp16":
        _to_fp16(src, dst)
    elif mode == "int8-dynamic":
        _quantize_dynamic(src, dst)
    else:
        if calibration is None or len(calibration) == 0:
            raise ValueError(f"Quantization mode {mode!r} needs calibration samples.")
        _quantize_static(src, dst, np.asarray(calibration, dtype=np.float32))


def _to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def _quantize_dynamic(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        src, dst, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8
    )


def _quantize_static(src: Path, dst: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name, shape = _graph_input(src)
    if tuple(calibration.shape[1:]) != tuple(shape[1:]):
        raise ValueError(
            f"Calibration samples are shaped {tuple(calibration.shape[1:])}, but the model's "
            f"input {name!r} takes {tuple(shape[1:])} per sample."
        )
    batch_dim = shape[0]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = _batches(calibration, batch_dim, default=32)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {name: batch[0]}

    with tempfile.TemporaryDirectory(prefix="edgetune-quant-") as tmp:
        # onnxruntime's recommended pre-processing: shape inference plus graph
        # optimisations (constant folding, conv-bn fusion) that leave fewer, larger ops to
        # quantize.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared))
        quantize_static(
            prepared,
            dst,
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # uint8 activations, int8 weights (U8S8): onnxruntime's fast x86 kernels. On this
            # 2-core x86 machine a pruned MobileNet ran at 0.14 ms (p50) with U8S8 and
            # 0.28 ms with S8S8 activations; fp32 was 0.13 ms.
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


def _graph_input(path: Path) -> tuple[str, list[int | None]]:
    """Name and shape (None for symbolic dimensions) of the model's only real input."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"{path} has {len(inputs)} inputs, but only 1-input models are supported.")
    dims = inputs[0].type.tensor_type.shape.dim
    return inputs[0].name, [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _batches(
    x: np.ndarray, batch_dim: int | None, *, default: int
) -> Iterator[tuple[np.ndarray, int]]:
    """Chunks of `x` that fit the model's batch dimension, and how many real rows each holds.

    A model exported with a fixed batch size takes exactly that many rows, so the last
    chunk is padded with zeros (and its padding rows are to be dropped from the outputs).
    """
    size = batch_dim if batch_dim else default
    for start in range(0, len(x), size):
        chunk = x[start : start + size]
        n = len(chunk)
        if batch_dim and n < batch_dim:
            pad = np.zeros((batch_dim - n, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        yield np.ascontiguousarray(chunk), n


def onnx_accuracy(path: Path, x: Any, y: Any, batch: int = 256) -> float:
    """Top-1 accuracy of the ONNX model at `path` on samples `x` with integer labels `y`.

    This is the deployed model's accuracy, which after quantization differs from the torch
    model's. `x` and `y` may be numpy arrays or torch tensors.
    """
    logits = teacher_logits_from_onnx(path, _numpy(x), batch=batch)
    labels = _numpy(y).reshape(-1)
    if len(labels) != len(logits):
        raise ValueError(f"`x` has {len(logits)} samples, but `y` has {len(labels)} labels.")
    return float((logits.argmax(axis=-1) == labels).mean())


def _numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


# --- knowledge distillation ----------------------------------------------------------------


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al. (2015): `alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE`.

    `teacher_T` and `student_T` are the softmaxes at temperature `T`; the KL term is averaged
    over the batch and multiplied by `T^2` so its gradients keep their scale as `T` changes.
    No gradient flows into the teacher.
    """
    if temperature <= 0:
        raise ValueError(f"The value of `temperature` is {temperature}, but must be > 0.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"The value of `alpha` is {alpha}, but must be in [0, 1].")
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits.detach() / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels)
    return alpha * t * t * soft + (1.0 - alpha) * hard


def teacher_logits_from_onnx(path: Path, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """The first output of the ONNX model at `path` for every row of `x`, run on the CPU.

    Rows are fed `batch` at a time, or as many as a fixed batch dimension of the model
    takes (exports with a fixed batch of 1 are run one sample at a time).
    """
    import onnxruntime as ort

    if batch < 1:
        raise ValueError(f"The value of `batch` is {batch}, but must be >= 1.")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    batch_dim = model_input.shape[0] if isinstance(model_input.shape[0], int) else None
    x = np.asarray(x, dtype=np.float32)
    outputs = [
        session.run(None, {model_input.name: chunk})[0][:n]
        for chunk, n in _batches(x, batch_dim, default=batch)
    ]
    if not outputs:
        raise ValueError("`x` holds no samples.")
    return np.concatenate(outputs)
