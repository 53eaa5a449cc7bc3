"""Distillation teachers: the soft targets a student learns from, computed once per job."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetune.errors import TrialFailed

if TYPE_CHECKING:
    from edgetune.trainers._classifier import ClassifierTrainer

logger = logging.getLogger(__name__)

#: Options that change what the teacher learns; threads and device do not.
_KEYED_OPTIONS = ("val_fraction", "teacher", "n_samples", "n_features", "n_classes",
                  "image_shape", "npz_file")


def teacher_logits(trainer: ClassifierTrainer, data: Any) -> np.ndarray:
    """The teacher's float32 logits on `data.x_train`, one row per training sample.

    "builtin" trains `trainer.teacher_model(data)` with cross-entropy for the job's epochs;
    its logits are cached in the job's cache directory under a key of everything that shapes
    them, and a file lock makes concurrent trials of a job train it once. Any other value is
    an ONNX model's file name in `<data_dir>/models/`, run with onnxruntime.
    """
    from edgetune.trainers import compression

    name = trainer.spec.options.get("teacher")
    if name is None:
        raise TrialFailed(
            "distill_alpha > 0 needs a teacher: set the trainer option `teacher` to 'builtin' "
            "or to an ONNX model's file name in the server's <data_dir>/models/"
        )
    if name != "builtin":
        if trainer.data_dir is None:
            raise TrialFailed("this trainer was started without a data directory for models")
        path = trainer.data_dir / "models" / str(name)
        if not path.is_file():
            raise TrialFailed(f"teacher model {path} does not exist; put the ONNX file there")
        logits = compression.teacher_logits_from_onnx(path, data.x_train, batch=256)
        _check_shape(logits, data)
        return logits
    if trainer.cache_dir is None:
        return _train_builtin(trainer, data)
    directory = trainer.cache_dir / "teachers"
    directory.mkdir(parents=True, exist_ok=True)
    cached = directory / f"{_key(trainer)}.npy"
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached.exists():
            return np.load(cached, allow_pickle=False)
        logits = _train_builtin(trainer, data)
        tmp = cached.with_suffix(".tmp.npy")
        np.save(tmp, logits, allow_pickle=False)
        tmp.replace(cached)
        return logits


def _train_builtin(trainer: ClassifierTrainer, data: Any) -> np.ndarray:
    import torch

    from edgetune.trainers._classifier import TrainingLoop, pick_device
    from edgetune.trainers.knobs import Compression

    device = pick_device(str(trainer.spec.options.get("device") or "auto"))
    model = trainer.teacher_model(data).to(device)
    loop = TrainingLoop(trainer, {"lr": 0.005}, Compression(), data, device, None,
                 lambda epoch, accuracy: None)
    loop.train(model, first=1, last=trainer.spec.epochs)
    logger.info("built-in teacher trained: validation accuracy %.4f", loop.accuracy)
    model.eval()
    with torch.inference_mode():
        x = torch.from_numpy(data.x_train).to(device)
        logits = torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)])
    return logits.float().cpu().numpy()


def _key(trainer: ClassifierTrainer) -> str:
    spec = trainer.spec
    shaping = {
        "trainer": trainer.name, "dataset": spec.dataset, "epochs": spec.epochs,
        "batch_size": spec.batch_size, "seed": spec.seed or 0,
        "options": {k: spec.options[k] for k in _KEYED_OPTIONS if k in spec.options},
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:32]


def _check_shape(logits: np.ndarray, data: Any) -> None:
    expected = (len(data.x_train), data.n_classes)
    if logits.shape != expected:
        raise TrialFailed(
            f"the teacher model gives logits of shape {logits.shape}, but the dataset needs "
            f"{expected} (one row per training sample, one column per class)"
        )


__all__ = ["teacher_logits"]
