"""Datasets a trainer can load by name, as float32 arrays split into train and validation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetune.errors import TrialFailed

IMAGE_DATASETS = ("digits", "mnist")
TABULAR_DATASETS = ("iris", "wine", "breast-cancer", "synthetic")


@dataclass(frozen=True)
class SplitData:
    """Inputs and int64 labels, split into training and validation sets."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int


@dataclass(frozen=True)
class ImageData(SplitData):
    """Images as (n, channels, height, width) float32 in [0, 1], labels as int64."""

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
    x_train, x_val, y_train, y_val = _split_arrays(x, y, val_fraction=val_fraction, seed=seed)
    return ImageData(x_train, y_train, x_val, y_val, n_classes=int(y.max()) + 1)


@dataclass(frozen=True)
class TabularData(SplitData):
    """Feature rows as (n, n_features) float32, standardized with the training split's mean and
    standard deviation; labels as int64."""

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


def load_tabular_dataset(
    name: str,
    *,
    val_fraction: float,
    seed: int,
    n_samples: int = 2000,
    n_features: int = 20,
    n_classes: int = 3,
) -> TabularData:
    """Load `name`, split it stratified and seeded, and standardize it on the training split.

    `n_samples`, `n_features` and `n_classes` size the `synthetic` dataset (drawn with
    `sklearn.datasets.make_classification`, seeded by `seed`); the other datasets ignore them.
    """
    from sklearn import datasets

    loaders = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast-cancer": datasets.load_breast_cancer,
    }
    if name in loaders:
        bunch = loaders[name]()
        x, y = bunch.data, bunch.target
    elif name == "synthetic":
        x, y = _synthetic(n_samples, n_features, n_classes, seed=seed)
    else:
        raise TrialFailed(f"unknown dataset {name!r}; known: {', '.join(TABULAR_DATASETS)}")
    y = y.astype(np.int64)
    try:
        x_train, x_val, y_train, y_val = _split_arrays(
            x, y, val_fraction=val_fraction, seed=seed
        )
    except ValueError as e:  # e.g. too few samples of a class for a stratified split
        raise TrialFailed(f"cannot split dataset {name!r}: {e}") from e
    # Statistics of the training split only, so that nothing of the validation split leaks
    # into training; a constant feature is left centred rather than divided by zero.
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return TabularData(
        x_train=((x_train - mean) / std).astype(np.float32),
        y_train=y_train,
        x_val=((x_val - mean) / std).astype(np.float32),
        y_val=y_val,
        n_classes=int(y.max()) + 1,
    )


def _synthetic(
    n_samples: int, n_features: int, n_classes: int, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    # make_classification puts each class's clusters on the vertices of a hypercube of
    # `n_informative` dimensions, so it needs n_classes * n_clusters_per_class <=
    # 2**n_informative; half the features informative (the rest noise) leaves room for that.
    needed = max(1, math.ceil(math.log2(n_classes)))
    if needed > n_features:
        raise TrialFailed(
            f"synthetic data with {n_classes} classes needs at least {needed} features, "
            f"not {n_features}"
        )
    n_informative = min(n_features, max(needed, n_features // 2))
    clusters = 2 if n_classes * 2 <= 2**n_informative else 1
    x, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=n_informative,
        n_redundant=0,
        n_repeated=0,
        n_classes=n_classes,
        n_clusters_per_class=clusters,
        random_state=seed,
    )
    return x, y


def _split_arrays(
    x: np.ndarray, y: np.ndarray, *, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_val, y_train, y_val), stratified by `y` and seeded."""
    from sklearn.model_selection import train_test_split

    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=val_fraction, random_state=seed, stratify=y
    )
    return x_train, x_val, y_train, y_val


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
