"""Datasets a trainer can load by name, as float32 arrays split into train and validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetune.errors import TrialFailed

IMAGE_DATASETS = ("digits", "mnist")


@dataclass(frozen=True)
class ImageData:
    """Images as (n, channels, height, width) float32 in [0, 1], labels as int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)


def load_image_dataset(
    name: str, *, val_fraction: float, seed: int, data_dir: str | None = None
) -> ImageData:
    """Load `name` and split it, stratified and seeded, into train and validation sets."""
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
        y = bunch.target.astype(np.int64)
    elif name == "mnist":
        x, y = _load_mnist(data_dir)
    else:
        raise TrialFailed(f"unknown dataset {name!r}; known: {', '.join(IMAGE_DATASETS)}")
    return _split(x, y, val_fraction=val_fraction, seed=seed)


def _split(x: np.ndarray, y: np.ndarray, *, val_fraction: float, seed: int) -> ImageData:
    from sklearn.model_selection import train_test_split

    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=val_fraction, random_state=seed, stratify=y
    )
    return ImageData(x_train, y_train, x_val, y_val, n_classes=int(y.max()) + 1)


def _load_mnist(data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    # MNIST cannot be downloaded at run time here: it is read from files the user already has,
    # either Keras' mnist.npz or the four original IDX files (gzipped or not).
    if not data_dir:
        raise TrialFailed("dataset 'mnist' needs the trainer option `data_dir` (its files)")
    root = Path(data_dir)
    npz = root / "mnist.npz"
    if npz.is_file():
        with np.load(npz, allow_pickle=False) as f:
            x = np.concatenate([f["x_train"], f["x_test"]])
            y = np.concatenate([f["y_train"], f["y_test"]])
    else:
        parts = []
        for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            found = [p for p in (root / stem, root / f"{stem}.gz") if p.is_file()]
            if not found:
                raise TrialFailed(
                    f"MNIST files not found under {root}: expected mnist.npz or the IDX files "
                    f"(missing {stem}[.gz])"
                )
            parts.append(_read_idx(found[0]))
        x = np.concatenate([parts[0], parts[2]])
        y = np.concatenate([parts[1], parts[3]])
    x = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    return x, y.astype(np.int64)


def _read_idx(path: Path) -> np.ndarray:
    import gzip

    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
