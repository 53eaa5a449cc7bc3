"""Datasets a trainer can load by name, as float32 arrays split into train and validation.

Nothing is downloaded: the file datasets are read from a data directory, laid out as

    <data_dir>/mnist/train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
                     t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]
        (also accepted, as before: the same four files straight in <data_dir>, or Keras'
        <data_dir>/mnist.npz)
    <data_dir>/fashion-mnist/  the same four IDX file names
    <data_dir>/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch
        (the "python version" archive, unpacked)
    <data_dir>/datasets/<npz_file>
        (`npz`: the caller passes the server's data directory here, never one from a request)

`synthetic` (a table) and `synthetic-image` are generated, seeded, at any size within
`max_dataset_bytes()` (EDGETUNE_MAX_DATASET_BYTES, 2 GiB by default), which bounds the memory
they take: they are generated in float32, in place, in the order of their split (the two
splits are views of one array), and their peak while loading stays within about 1.3 times
their size. `check_dataset_options` checks the
options that choose or size a dataset before a job is accepted; the loaders check again what
protects memory and the file system.
"""

from __future__ import annotations

import codecs
import gzip
import math
import os
import pickle
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from edgetune.errors import InvalidSpecError, TrialFailed

IMAGE_DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "synthetic-image", "npz")
TABULAR_DATASETS = ("iris", "wine", "breast-cancer", "synthetic", "npz")


def max_dataset_bytes() -> int:
    """The most bytes a generated dataset may take in memory (its inputs as float32 and labels
    as int64, both splits), or an npz dataset's inputs as float32: the operator's
    `EDGETUNE_MAX_DATASET_BYTES` (`DatasetSettings`, 2 GiB by default)."""
    from edgetune.settings import DatasetSettings

    return DatasetSettings().max_dataset_bytes


def _bound(limit: int) -> str:
    return f"{limit} ({limit / 2**30:g} GiB, EDGETUNE_MAX_DATASET_BYTES)"


#: Rows of a dataset handled at once while it is generated or standardized: about 4 MiB of
#: float32, so that no temporary comes near the size of the dataset.
_CHUNK_BYTES = 2**22
#: A file name under `<data_dir>/datasets/`; `..` is refused on top of the pattern.
NPZ_FILE = re.compile(r"[A-Za-z0-9_.\-]{1,128}\.npz")

#: Option -> what it means, for the trainer options that choose or size a dataset.
DATASET_OPTIONS: dict[str, str] = {
    "npz_file": "npz: name of a .npz file (arrays x, y; optionally x_val, y_val) in the "
                "server's <data_dir>/datasets/",
    "n_samples": "synthetic, synthetic-image: samples, 50..1000000 (default 2000)",
    "n_features": "synthetic: features, 1..10000 (default 20)",
    "n_classes": "synthetic, synthetic-image: classes, 2..1000 (default 3; synthetic-image 10)",
    "image_shape": "synthetic-image: [channels, height, width], channels 1..64, height and "
                   "width 4..1024 (default [1, 16, 16])",
}
#: Option -> the datasets it applies to; given with any other dataset, it is refused.
_APPLIES_TO: dict[str, tuple[str, ...]] = {
    "npz_file": ("npz",),
    "n_samples": ("synthetic", "synthetic-image"),
    "n_features": ("synthetic",),
    "n_classes": ("synthetic", "synthetic-image"),
    "image_shape": ("synthetic-image",),
}
_SIZE_RANGES = {"n_samples": (50, 1_000_000), "n_features": (1, 10_000), "n_classes": (2, 1000)}
# The image trainer's CNN max-pools twice by 2, so an image needs 4 pixels a side.
_IMAGE_SHAPE_RANGES = (("channels", 1, 64), ("height", 4, 1024), ("width", 4, 1024))
_SYNTHETIC_DEFAULTS: dict[str, dict[str, Any]] = {
    "synthetic": {"n_samples": 2000, "n_features": 20, "n_classes": 3},
    "synthetic-image": {"n_samples": 2000, "n_classes": 10, "image_shape": (1, 16, 16)},
}


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


@dataclass(frozen=True)
class TabularData(SplitData):
    """Feature rows as (n, n_features) float32, standardized with the training split's mean and
    standard deviation; labels as int64."""

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


# --- options ---------------------------------------------------------------------------------
def check_dataset_options(dataset: str, options: Mapping[str, object]) -> None:
    """Raise `InvalidSpecError` when the dataset options in `options` break a rule.

    Reads only the options of `DATASET_OPTIONS` (and `val_fraction`, to check that a synthetic
    dataset can be split); the trainer checks the others. Pure and cheap: no file is opened.
    """
    known = tuple(dict.fromkeys(IMAGE_DATASETS + TABULAR_DATASETS))
    if dataset not in known:
        raise InvalidSpecError(
            "trainer.dataset", f"is {dataset!r}, but must be one of {', '.join(known)}"
        )
    for key, datasets in _APPLIES_TO.items():
        if key not in options:
            continue
        field = f"trainer.options.{key}"
        if dataset not in datasets:
            # Accepting it silently would let a user believe it changed something.
            raise InvalidSpecError(
                field, f"only applies to the dataset{'s' if len(datasets) > 1 else ''} "
                f"{', '.join(repr(d) for d in datasets)}, not {dataset!r}",
            )
        _check_option_value(key, options[key])
    if dataset == "npz" and "npz_file" not in options:
        raise InvalidSpecError(
            "trainer.options.npz_file", "is required by the dataset 'npz': the name of a .npz "
            "file in the server's <data_dir>/datasets/",
        )
    if dataset in _SYNTHETIC_DEFAULTS:
        sizes = {**_SYNTHETIC_DEFAULTS[dataset],
                 **{k: options[k] for k in _SYNTHETIC_DEFAULTS[dataset] if k in options}}
        fraction = options.get("val_fraction", 0.2)
        _check_synthetic(
            dataset, **sizes,
            val_fraction=float(cast(float, fraction)) if _is_fraction(fraction) else 0.2,
        )


def _check_option_value(key: str, value: object) -> None:
    field = f"trainer.options.{key}"
    if key == "npz_file" and (problem := _npz_name_problem(value)):
        raise InvalidSpecError(field, f"is {value!r}, but {problem}")
    if key in _SIZE_RANGES:
        low, high = _SIZE_RANGES[key]
        if not (int_in(value, low, high)):
            raise InvalidSpecError(
                field, f"is {value!r}, but must be an integer in [{low}, {high}]"
            )
    if key == "image_shape":
        rule = ", ".join(f"{name} in [{low}, {high}]" for name, low, high in _IMAGE_SHAPE_RANGES)
        if not (
            isinstance(value, list | tuple) and len(value) == 3
            and all(int_in(v, low, high)
                    for v, (_, low, high) in zip(value, _IMAGE_SHAPE_RANGES, strict=True))
        ):
            raise InvalidSpecError(
                field, f"is {value!r}, but must be [channels, height, width] with {rule}"
            )


def _check_synthetic(
    dataset: str, *, n_samples: int, n_classes: int, n_features: int | None = None,
    image_shape: Sequence[int] | None = None, val_fraction: float | None = None,
) -> None:
    """The rules between the sizes of a synthetic dataset (and those that protect memory)."""
    field = "trainer.options.{}".format
    if not int_in(n_classes, 2, None):
        raise InvalidSpecError(field("n_classes"), f"is {n_classes!r}, but must be >= 2")
    if not int_in(n_samples, n_classes, None):
        raise InvalidSpecError(
            field("n_samples"), f"is {n_samples!r}, but must be >= n_classes ({n_classes})"
        )
    if dataset == "synthetic-image":
        if not (image_shape is not None and len(image_shape) == 3
                and all(int_in(v, 1, None) for v in image_shape)):
            raise InvalidSpecError(
                field("image_shape"), f"is {image_shape!r}, but must be 3 positive integers"
            )
        cells, what = math.prod(image_shape), "channels x height x width"
    else:
        if not (int_in(n_features, 1, None)):
            raise InvalidSpecError(field("n_features"), f"is {n_features!r}, but must be >= 1")
        cells, what = cast(int, n_features), "n_features"
        # make_classification puts each class on a vertex of a hypercube of its informative
        # features, so n_classes <= 2**n_features.
        needed = max(1, math.ceil(math.log2(n_classes)))
        if cells < needed:
            raise InvalidSpecError(
                field("n_features"),
                f"is {cells}, but {n_classes} classes need at least {needed} features",
            )
    size = synthetic_bytes(n_samples, cells)
    limit = max_dataset_bytes()
    if size > limit:
        raise InvalidSpecError(
            field("n_samples"),
            f"n_samples x ({what} x 4 + 8) bytes (float32 inputs, int64 labels) is {size} "
            f"bytes, but must be <= {_bound(limit)}",
        )
    if val_fraction is not None:
        n_val = math.ceil(val_fraction * n_samples)
        if min(n_val, n_samples - n_val) < n_classes:
            raise InvalidSpecError(
                field("n_samples"),
                f"is {n_samples}, but a stratified split needs at least {n_classes} samples "
                f"(n_classes) in both training and validation sets; it gives {n_val} to "
                "validation",
            )


def synthetic_bytes(n_samples: int, cells: int) -> int:
    """The memory a generated dataset holds: `cells` float32 inputs and an int64 label per
    sample, over both splits (which are views of one array each)."""
    return n_samples * (cells * 4 + 8)


def _npz_name_problem(value: object) -> str | None:
    """Why `value` is not an acceptable `npz_file`, or None."""
    if not isinstance(value, str):
        return "must be a file name (a string)"
    if ".." in value:
        return "must not contain '..'"
    if not NPZ_FILE.fullmatch(value):
        return ("must be a bare file name ending in '.npz' (letters, digits, '_', '.', '-'; at "
                "most 128 before '.npz'; no directory), of a file in the server's "
                "<data_dir>/datasets/")
    return None


def int_in(value: object, low: int, high: int | None) -> bool:
    """Whether `value` is an integer in [low, high] (no upper bound when `high` is None).

    bool is an int subclass, but `threads: true` is a mistake, not 1.
    """
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        return False
    return bool(low <= value and (high is None or value <= high))


def _is_fraction(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1


# --- loading ---------------------------------------------------------------------------------
def load_image_dataset(
    name: str,
    *,
    val_fraction: float,
    seed: int,
    data_dir: str | os.PathLike[str] | None = None,
    npz_file: str | None = None,
    n_samples: int = 2000,
    n_classes: int = 10,
    image_shape: Sequence[int] = (1, 16, 16),
    options: Mapping[str, object] | None = None,
) -> ImageData:
    """Load `name` and split it, stratified and seeded, into train and validation sets.

    `data_dir` is the server's data directory (see the module docstring for its layout): the
    files of mnist, fashion-mnist and cifar10 are looked up there (never in a directory a
    request names), and `npz_file` is a file name in its `datasets/` folder (an npz
    holding `x_val` and `y_val` is not split again). `n_samples`, `n_classes` and `image_shape`
    (channels, height, width) size `synthetic-image`, generated from `seed`. `options`, the
    trainer's options (checked by `check_dataset_options`), override the keyword arguments of
    the same names.
    """
    files_dir = data_dir
    npz_file = _option(options, "npz_file", npz_file)
    n_samples = _option(options, "n_samples", n_samples)
    n_classes = _option(options, "n_classes", n_classes)
    image_shape = _option(options, "image_shape", image_shape)
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    n_train: int | None = None  # set when the data come in split order already
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
        y = bunch.target.astype(np.int64)
    elif name in ("mnist", "fashion-mnist"):
        x, y = _load_idx_dataset(name, files_dir)
    elif name == "cifar10":
        x, y = _load_cifar10(files_dir)
    elif name == "synthetic-image":
        _check_generated(name, n_samples=n_samples, n_classes=n_classes, image_shape=image_shape)
        x, y, n_train = _synthetic_images(n_samples, tuple(image_shape), n_classes, seed=seed,
                                          val_fraction=val_fraction)
    elif name == "npz":
        x, y, x_val, y_val = _load_npz(data_dir, npz_file, images=True)
    else:
        raise TrialFailed(f"unknown dataset {name!r}; known: {', '.join(IMAGE_DATASETS)}")
    if x_val is None or y_val is None:
        x_train, x_val, y_train, y_val = _split(name, x, y, val_fraction=val_fraction, seed=seed,
                                                n_train=n_train)
    else:
        x_train, y_train = x, y
    return ImageData(x_train, y_train, x_val, y_val,
                     n_classes=int(max(y_train.max(), y_val.max())) + 1)


def load_tabular_dataset(
    name: str,
    *,
    val_fraction: float,
    seed: int,
    n_samples: int = 2000,
    n_features: int = 20,
    n_classes: int = 3,
    data_dir: str | os.PathLike[str] | None = None,
    npz_file: str | None = None,
    options: Mapping[str, object] | None = None,
) -> TabularData:
    """Load `name`, split it stratified and seeded, and standardize it on the training split.

    `n_samples`, `n_features` and `n_classes` size the `synthetic` dataset (drawn with
    `sklearn.datasets.make_classification`, seeded by `seed`); the other datasets ignore them.
    For `npz`, `data_dir` is the server's data directory and `npz_file` a file name in its
    `datasets/` folder (an npz holding `x_val` and `y_val` is not split again). `options`, the
    trainer's options (checked by `check_dataset_options`), override the keyword arguments of
    the same names.
    """
    from sklearn import datasets

    npz_file = _option(options, "npz_file", npz_file)
    n_samples = _option(options, "n_samples", n_samples)
    n_features = _option(options, "n_features", n_features)
    n_classes = _option(options, "n_classes", n_classes)
    loaders = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast-cancer": datasets.load_breast_cancer,
    }
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    n_train: int | None = None  # set when the data come in split order already
    if name in loaders:
        bunch = loaders[name]()
        x, y = bunch.data, bunch.target
    elif name == "synthetic":
        _check_generated(name, n_samples=n_samples, n_classes=n_classes, n_features=n_features)
        x, y, n_train = _synthetic_table(n_samples, n_features, n_classes, seed=seed,
                                         val_fraction=val_fraction)
    elif name == "npz":
        x, y, x_val, y_val = _load_npz(data_dir, npz_file, images=False)
    else:
        raise TrialFailed(f"unknown dataset {name!r}; known: {', '.join(TABULAR_DATASETS)}")
    x = np.asarray(x, dtype=np.float32)  # no copy of a generated table
    y = y.astype(np.int64, copy=False)
    if x_val is None or y_val is None:
        x_train, x_val, y_train, y_val = _split(name, x, y, val_fraction=val_fraction, seed=seed,
                                                n_train=n_train)
    else:
        x_train, y_train = x, y
        x_val = np.asarray(x_val, dtype=np.float32)
    # Statistics of the training split only, so that nothing of the validation split leaks
    # into training; a constant feature is left centred rather than divided by zero.
    mean, std = _column_statistics(x_train)
    for part in (x_train, x_val):
        _standardize_in_place(part, mean, std)
    return TabularData(
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        n_classes=int(max(y_train.max(), y_val.max())) + 1,
    )


def _row_chunks(x: np.ndarray) -> Iterator[np.ndarray]:
    """Views of `x`, a few rows at a time (about `_CHUNK_BYTES` each)."""
    rows = max(1, _CHUNK_BYTES // max(1, x[:1].nbytes))
    for start in range(0, len(x), rows):
        yield x[start : start + rows]


def _column_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's mean and standard deviation (float64 sums, a chunk at a time: numpy's
    `std` would make a float64 copy of the whole table); a constant column's is 1."""
    total = np.zeros(x.shape[1], dtype=np.float64)
    for chunk in _row_chunks(x):
        total += chunk.sum(axis=0, dtype=np.float64)
    mean = total / max(1, len(x))
    squares = np.zeros_like(total)
    for chunk in _row_chunks(x):
        deviation = chunk - mean  # float64, the size of the chunk
        squares += np.einsum("ij,ij->j", deviation, deviation)
    std = np.sqrt(squares / max(1, len(x)))
    std[std == 0] = 1.0
    return mean, std


def _standardize_in_place(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    shift, scale = mean.astype(np.float32), std.astype(np.float32)
    for chunk in _row_chunks(x):
        chunk -= shift
        chunk /= scale


def _split(
    name: str, x: np.ndarray, y: np.ndarray, *, val_fraction: float, seed: int,
    n_train: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_val, y_train, y_val), stratified by `y` and seeded: views of `x` and `y` put
    in split order (one copy of each), or of `x` and `y` as they are when they come in split
    order already, with the first `n_train` samples for training."""
    if n_train is None:
        order, n_train = _split_order(name, y, val_fraction=val_fraction, seed=seed)
        x, y = x[order], y[order]
    return x[:n_train], x[n_train:], y[:n_train], y[n_train:]


def _split_order(
    name: str, y: np.ndarray, *, val_fraction: float, seed: int
) -> tuple[np.ndarray, int]:
    """The order of the samples that puts the training split first (stratified by `y`,
    seeded: sklearn's `train_test_split`, on indices), and the training split's size."""
    from sklearn.model_selection import train_test_split

    try:
        train, val = train_test_split(
            np.arange(len(y)), test_size=val_fraction, random_state=seed, stratify=y
        )
    except ValueError as e:  # e.g. too few samples of a class for a stratified split
        raise TrialFailed(f"cannot split dataset {name!r}: {e}") from e
    return np.concatenate([train, val]), len(train)


def _option(options: Mapping[str, object] | None, key: str, default: Any) -> Any:
    return default if options is None or key not in options else options[key]


def _require_data_dir(name: str, data_dir: str | os.PathLike[str] | None) -> Path:
    if not data_dir or not isinstance(data_dir, str | os.PathLike):
        raise TrialFailed(f"dataset {name!r} is read from the server's data directory, "
                          "but this trainer was started without one")
    return Path(data_dir)


# --- generated -------------------------------------------------------------------------------
def _check_generated(name: str, **sizes: Any) -> None:
    try:
        _check_synthetic(name, **sizes)
    except InvalidSpecError as e:
        raise TrialFailed(f"dataset {name!r}: {e}") from e


def _synthetic_table(
    n_samples: int, n_features: int, n_classes: int, *, seed: int, val_fraction: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """A classification table as `sklearn.datasets.make_classification` draws it (each class
    a mix of Gaussian clusters on vertices of a hypercube of the informative features, mixed
    linearly; the other features noise), in split order: (x, y, n_train).

    Drawn in float32, a chunk of rows at a time, straight into the one array returned:
    make_classification draws float64 and shuffles copies, several times the table's size.
    Where it draws a mixing matrix per cluster, of n_informative^2 (100 MB at 5,000), the
    clusters here share one, block-diagonal with blocks of at most `_MIXING_BLOCK` features.
    """
    rng = np.random.default_rng(seed)
    # Half the features informative (the rest noise), and at least the log2(n_classes) that
    # the hypercube of classes needs.
    needed = max(1, math.ceil(math.log2(n_classes)))
    n_informative = min(n_features, max(needed, n_features // 2))
    clusters = 2 if n_classes * 2 <= 2**n_informative else 1
    centroids = _hypercube_vertices(rng, n_classes * clusters, n_informative)
    mixing = [(start, 2 * rng.random((width, width), dtype=np.float32) - 1)
              for start in range(0, n_informative, _MIXING_BLOCK)
              for width in [min(_MIXING_BLOCK, n_informative - start)]]
    # Balanced classes (as make_classification), a random cluster of its class per sample.
    y = rng.permutation(np.arange(n_samples, dtype=np.int64) % n_classes)
    order, n_train = _split_order("synthetic", y, val_fraction=val_fraction, seed=seed)
    y = y[order]
    del order
    x = np.empty((n_samples, n_features), dtype=np.float32)
    start = 0
    for block in _row_chunks(x):
        n = len(block)
        labels = y[start : start + n]
        rng.standard_normal(out=block, dtype=np.float32)
        informative = block[:, :n_informative]
        for first, matrix in mixing:
            part = informative[:, first : first + len(matrix)]
            part[...] = part @ matrix
        informative += centroids[labels * clusters + rng.integers(clusters, size=n)]
        start += n
    return x, y, n_train


#: The most informative features one block of a synthetic table's mixing matrix spans.
_MIXING_BLOCK = 64


def _hypercube_vertices(rng: np.random.Generator, n: int, dims: int) -> np.ndarray:
    """`n` distinct vertices of the cube [-1, 1]^dims, as float32 rows (n <= 2**dims)."""
    if dims <= 30:
        codes = rng.choice(2**dims, size=n, replace=False)
        bits = (codes[:, None] >> np.arange(dims)) & 1
    else:
        # 2**31 vertices or more: n <= 2000 random ones are distinct but with odds of about
        # n^2 / 2^32 (1e-3), and two clusters of one class sharing a vertex change nothing.
        bits = rng.integers(0, 2, size=(n, dims))
    return (2 * bits - 1).astype(np.float32)


#: Standard deviation of the per-image noise on a synthetic image's 4 x 4 grid, against 1 for
#: the class patterns: a linear model reaches about 0.93 on 16 x 16 images of 10 classes.
_SYNTHETIC_GRID_NOISE = 0.8


def _synthetic_images(
    n_samples: int, image_shape: tuple[int, ...], n_classes: int, *, seed: int,
    val_fraction: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Balanced classes, each a smooth random pattern, under per-image contrast and noise; in
    split order, drawn in float32 straight into the one array returned: (x, y, n_train)."""
    c, h, w = image_shape
    rng = np.random.default_rng(seed)
    # A class is a 4 x 4 grid of random levels per channel, blown up to the image size:
    # neighbouring pixels agree, which convolutions can use, and the patterns stay small. Noise
    # on the same grid keeps the classes overlapping however many pixels an image has (pixel
    # noise alone would average out on large images and make every model perfect).
    coarse = rng.standard_normal((n_classes, c, 4, 4), dtype=np.float32)
    cell_h, cell_w = -(-h // 4), -(-w // 4)
    y = rng.permutation(np.arange(n_samples, dtype=np.int64) % n_classes)
    order, n_train = _split_order("synthetic-image", y, val_fraction=val_fraction, seed=seed)
    y = y[order]
    del order
    x = np.empty((n_samples, c, h, w), dtype=np.float32)
    start = 0
    for block in _row_chunks(x):
        n = len(block)
        rng.random(out=block, dtype=np.float32)  # uniform: several times faster than normal
        block -= 0.5
        block *= 0.5
        contrast = rng.uniform(0.5, 1.5, size=(n, 1, 1, 1)).astype(np.float32)
        grid = contrast * coarse[y[start : start + n]]
        grid += _SYNTHETIC_GRID_NOISE * rng.standard_normal((n, c, 4, 4), dtype=np.float32)
        grid = grid.repeat(cell_h, axis=2).repeat(cell_w, axis=3)[:, :, :h, :w]
        block += 0.5 + 0.15 * grid
        np.clip(block, 0.0, 1.0, out=block)
        start += n
    return x, y, n_train


# --- MNIST and Fashion-MNIST -----------------------------------------------------------------
_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _load_idx_dataset(
    name: str, data_dir: str | os.PathLike[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    root = _require_data_dir(name, data_dir)
    title = "MNIST" if name == "mnist" else "Fashion-MNIST"
    # `mnist` was read from files straight in data_dir before it had a folder; both still work.
    folders = [root / name, root] if name == "mnist" else [root / name]
    found: list[list[Path | None]] = [
        [next((p for p in (f / s, f / f"{s}.gz") if p.is_file()), None) for s in _IDX_STEMS]
        for f in folders
    ]
    complete = next((paths for paths in found if all(paths)), None)
    if complete is None and name == "mnist" and (root / "mnist.npz").is_file():
        with np.load(root / "mnist.npz", allow_pickle=False) as f:
            x = np.concatenate([f["x_train"], f["x_test"]])
            y = np.concatenate([f["y_train"], f["y_test"]])
    elif complete is None:
        best = max(range(len(folders)), key=lambda i: (sum(map(bool, found[i])), -i))
        missing = [folders[best] / f"{s}.gz" for s, p in zip(_IDX_STEMS, found[best], strict=True)
                   if p is None]
        also = (f"; also accepted: the same files straight in {root}, or Keras' "
                f"{root / 'mnist.npz'}" if name == "mnist" else "")
        raise TrialFailed(
            f"{title} files not found: missing {', '.join(map(str, missing))} (each may also "
            f"be uncompressed, without .gz){also}. Nothing is downloaded: put the files there."
        )
    else:
        train_x, train_y, test_x, test_y = (_read_idx(cast(Path, p)) for p in complete)
        for images, labels in ((train_x, train_y), (test_x, test_y)):
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                folder = cast(Path, complete[0]).parent
                raise TrialFailed(
                    f"{title} files under {folder} disagree: images of shape {images.shape} "
                    f"with labels of shape {labels.shape}"
                )
        x = np.concatenate([train_x, test_x])
        y = np.concatenate([train_y, test_y])
    x = x.reshape(len(x), 1, *x.shape[1:]).astype(np.float32)
    x /= 255  # in place: `x / 255.0` would make a float64 copy first
    return x, y.astype(np.int64)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (magic 0x00000803 or 0x00000801), gzipped or not."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise TrialFailed(f"cannot read {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise TrialFailed(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != offset + math.prod(dims):
        raise TrialFailed(
            f"{path} is truncated or too long: its header says {dims}, which needs "
            f"{offset + math.prod(dims)} bytes, but it has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


# --- CIFAR-10 --------------------------------------------------------------------------------
_CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_RECONSTRUCT = cast(tuple[Any, ...], np.empty(0).__reduce__())[0]
# What a batch of the python version pickles: a dict of bytes, lists and uint8 arrays. Pickle
# runs whatever callable a file names, so any other name is refused.
_CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{module}.{name} is not something a CIFAR-10 batch holds"
            ) from None


def _load_cifar10(data_dir: str | os.PathLike[str] | None) -> tuple[np.ndarray, np.ndarray]:
    folder = _require_data_dir("cifar10", data_dir) / "cifar-10-batches-py"
    paths = [folder / name for name in _CIFAR_FILES]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise TrialFailed(
            f"CIFAR-10 files not found: missing {', '.join(map(str, missing))}. Nothing is "
            f"downloaded: unpack the python version (cifar-10-python.tar.gz) into "
            f"{folder.parent}."
        )
    batches = [_read_cifar_batch(p) for p in paths]
    x = np.concatenate([b[0] for b in batches]).reshape(-1, 3, 32, 32).astype(np.float32)
    x /= 255  # in place: `x / 255.0` would make a float64 copy first
    return x, np.concatenate([b[1] for b in batches])


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            # The batches were pickled by Python 2: its str keys arrive as bytes.
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise TrialFailed(f"cannot read the CIFAR-10 batch {path}: {e}") from e
    if not isinstance(batch, dict):
        raise TrialFailed(f"{path} is not a CIFAR-10 batch: it holds a {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    try:
        y = np.asarray(batch.get(b"labels", batch.get("labels")), dtype=np.int64)
    except (TypeError, ValueError):
        y = np.empty(0, dtype=np.int64)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32 or y.shape != (len(data),):
        raise TrialFailed(
            f"{path} is not a CIFAR-10 batch: expected 'data' as (n, 3072) uint8 and n 'labels'"
        )
    if y.min(initial=0) < 0 or y.max(initial=0) > 9:
        raise TrialFailed(f"{path} holds labels outside 0..9")
    return data, y


# --- npz -------------------------------------------------------------------------------------
_NPZ_KEYS = ("x", "y", "x_val", "y_val")


def _load_npz(
    data_dir: str | os.PathLike[str] | None, npz_file: str | None, *, images: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(x, y, x_val, y_val) from `<data_dir>/datasets/<npz_file>`, checked."""
    path = _npz_path(data_dir, npz_file)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise TrialFailed(f"cannot read {path} as an npz archive: {e}") from e
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a lone .npy array, renamed
        raise TrialFailed(f"{path} holds a single array, not an npz archive of x and y")
    with loaded:
        keys = set(loaded.files)
        if unknown := keys - set(_NPZ_KEYS):
            raise TrialFailed(
                f"{path} holds {', '.join(sorted(unknown))}, but an npz dataset holds only x, "
                "y and optionally x_val, y_val"
            )
        if missing := {"x", "y"} - keys:
            raise TrialFailed(f"{path} lacks the array(s) {', '.join(sorted(missing))}")
        if ("x_val" in keys) != ("y_val" in keys):
            raise TrialFailed(f"{path} must hold both x_val and y_val, or neither")
        # Uncompressed sizes from the archive's directory: refused before anything is read.
        archive = loaded.zip
        stored = 0 if archive is None else sum(archive.getinfo(f"{k}.npy").file_size for k in keys)
        limit = max_dataset_bytes()
        if stored > limit:
            raise TrialFailed(f"{path} holds {stored} bytes of arrays, but at most "
                              f"{_bound(limit)}")
        try:
            arrays = {k: loaded[k] for k in keys}
        except (OSError, ValueError, EOFError, KeyError) as e:  # e.g. object arrays, bad zip
            raise TrialFailed(f"cannot read the arrays of {path}: {e}") from e
    x = _npz_inputs(path, "x", arrays["x"], images=images)
    # Every class 0..k-1 must occur in y, so no label can reach len(y).
    y = _npz_labels(path, "y", arrays["y"], len(x), below=len(x))
    k = int(y.max()) + 1
    x_val = y_val = None
    if "x_val" in arrays:
        x_val = _npz_inputs(path, "x_val", arrays["x_val"], images=images)
        y_val = _npz_labels(path, "y_val", arrays["y_val"], len(x_val), below=k)
        if x_val.shape[1:] != x.shape[1:]:
            raise TrialFailed(
                f"{path}: x_val has samples of shape {x_val.shape[1:]}, but x of {x.shape[1:]}"
            )
    absent = np.setdiff1d(np.arange(k), y)
    if k < 2 or len(absent):
        raise TrialFailed(
            f"{path}: labels must be the integers 0..k-1 (k >= 2 classes), each in y, but "
            + (f"y holds only the label {k - 1}" if k < 2 else
               f"y never holds {', '.join(map(str, absent[:10]))}"
               + (" (do the labels start at 1?)" if absent[0] == 0 else ""))
        )
    return x, y, x_val, y_val


def _npz_path(data_dir: str | os.PathLike[str] | None, npz_file: str | None) -> Path:
    if npz_file is None:
        raise TrialFailed("dataset 'npz' needs the trainer option `npz_file` (a file name)")
    if problem := _npz_name_problem(npz_file):
        raise TrialFailed(f"npz_file {npz_file!r} is refused: it {problem}")
    if not data_dir:
        raise TrialFailed("dataset 'npz' needs the server's data directory")
    folder = (Path(data_dir) / "datasets").resolve()
    # resolve() follows symbolic links, so a link out of the folder is refused as well.
    path = (folder / npz_file).resolve()
    if path.parent != folder:
        raise TrialFailed(f"npz_file {npz_file!r} is refused: it leads out of {folder}")
    if not path.is_file():
        raise TrialFailed(
            f"npz file not found: {path}. Nothing is downloaded: put it there, with arrays x "
            "and y (optionally x_val and y_val)."
        )
    return path


def _npz_inputs(path: Path, key: str, a: np.ndarray, *, images: bool) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise TrialFailed(f"{path}: {key} has dtype {a.dtype}, but must hold real numbers")
    if images and a.ndim == 3:  # (n, height, width): one channel
        a = a[:, None]
    if images and a.ndim != 4:
        raise TrialFailed(f"{path}: {key} has shape {a.shape}, but images must be (n, channels, "
                          "height, width) or (n, height, width)")
    if not images and a.ndim != 2:
        raise TrialFailed(f"{path}: {key} has shape {a.shape}, but must be (n, n_features)")
    if len(a) == 0 or a.size == 0:
        raise TrialFailed(f"{path}: {key} is empty (shape {a.shape})")
    limit = max_dataset_bytes()
    if a.size * 4 > limit:
        raise TrialFailed(f"{path}: {key} takes {a.size * 4} bytes as float32, but at most "
                          f"{_bound(limit)}")
    if images and a.dtype == np.uint8:
        return a / np.float32(255)  # float32 already
    if images and a.dtype.kind != "f":
        raise TrialFailed(f"{path}: {key} has dtype {a.dtype}, but images must be uint8 "
                          "(0..255) or floats in [0, 1]")
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused below
        x = a.astype(np.float32)
    if not np.isfinite(x).all():
        raise TrialFailed(f"{path}: {key} holds NaN or infinite values (as float32)")
    if images and (x.min() < 0 or x.max() > 1):
        raise TrialFailed(f"{path}: {key} holds values in [{x.min()}, {x.max()}], but float "
                          "images must lie in [0, 1] (or be uint8 0..255)")
    return x


def _npz_labels(path: Path, key: str, a: np.ndarray, n: int, *, below: int) -> np.ndarray:
    if a.dtype.kind not in "iu":
        raise TrialFailed(f"{path}: {key} has dtype {a.dtype}, but labels must be integers")
    if a.shape != (n,):
        raise TrialFailed(f"{path}: {key} has shape {a.shape}, but must be ({n},), one label "
                          "per sample")
    if a.min() < 0:
        raise TrialFailed(f"{path}: {key} holds {a.min()}, but labels must be >= 0")
    if a.max() >= below:
        raise TrialFailed(
            f"{path}: {key} holds the label {a.max()}, but labels must be 0..k-1 with every "
            f"class in y" + (f" (here k <= {below}, the number of samples)" if key == "y" else
                             f" (y has k = {below})")
        )
    return a.astype(np.int64)
