"""The datasets: shapes, splits and standardization; files read (never fetched) from a data
directory, with errors that name the missing files; generated data; users' npz files confined
to the server's `datasets/` folder; the option checks made at submission."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from edgetune.errors import InvalidSpecError, TrialFailed
from edgetune.trainers.datasets import (
    IMAGE_DATASETS,
    TABULAR_DATASETS,
    check_dataset_options,
    load_image_dataset,
    load_tabular_dataset,
    max_dataset_bytes,
    synthetic_bytes,
)

SHAPES = {"iris": (150, 4, 3), "wine": (178, 13, 3), "breast-cancer": (569, 30, 2),
          "synthetic": (2000, 20, 3)}
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def test_the_dataset_names() -> None:
    assert IMAGE_DATASETS == ("digits", "mnist", "fashion-mnist", "cifar10", "synthetic-image",
                              "npz")
    assert TABULAR_DATASETS == ("iris", "wine", "breast-cancer", "synthetic", "npz")


# --- tabular ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHAPES)
def test_shapes_and_types(name: str) -> None:
    data = load_tabular_dataset(name, val_fraction=0.2, seed=0)
    n, n_features, n_classes = SHAPES[name]
    assert len(data.x_train) + len(data.x_val) == n
    assert len(data.x_val) == pytest.approx(0.2 * n, abs=1)
    assert data.x_train.shape[1] == data.x_val.shape[1] == data.n_features == n_features
    assert data.n_classes == n_classes
    assert data.x_train.dtype == data.x_val.dtype == np.float32
    assert data.y_train.dtype == data.y_val.dtype == np.int64
    assert set(np.unique(data.y_train)) == set(np.unique(data.y_val)) == set(range(n_classes))


@pytest.mark.parametrize("name", SHAPES)
def test_standardized_with_training_statistics_only(name: str) -> None:
    data = load_tabular_dataset(name, val_fraction=0.2, seed=0)
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1, atol=1e-4)
    # Fitted on the validation split too, its mean would be 0 as well.
    assert np.abs(data.x_val.mean(axis=0)).max() > 1e-3


def test_the_split_is_seeded() -> None:
    first = load_tabular_dataset("wine", val_fraction=0.25, seed=3)
    again = load_tabular_dataset("wine", val_fraction=0.25, seed=3)
    other = load_tabular_dataset("wine", val_fraction=0.25, seed=4)
    np.testing.assert_array_equal(first.x_val, again.x_val)
    np.testing.assert_array_equal(first.y_train, again.y_train)
    assert not np.array_equal(first.x_val, other.x_val)


def test_the_split_is_stratified() -> None:
    data = load_tabular_dataset("breast-cancer", val_fraction=0.2, seed=0)
    assert np.mean(data.y_train) == pytest.approx(np.mean(data.y_val), abs=0.01)


def test_synthetic_honours_the_sizes_and_the_seed() -> None:
    data = load_tabular_dataset(
        "synthetic", val_fraction=0.5, seed=1, n_samples=300, n_features=7, n_classes=5
    )
    assert len(data.x_train) + len(data.x_val) == 300
    assert data.n_features == 7 and data.n_classes == 5
    again = load_tabular_dataset(
        "synthetic", val_fraction=0.5, seed=1, n_samples=300, n_features=7, n_classes=5
    )
    np.testing.assert_array_equal(data.x_train, again.x_train)
    other = load_tabular_dataset(
        "synthetic", val_fraction=0.5, seed=2, n_samples=300, n_features=7, n_classes=5
    )
    assert not np.array_equal(data.x_train, other.x_train)


def test_synthetic_sizes_from_the_options_override_the_arguments() -> None:
    data = load_tabular_dataset("synthetic", val_fraction=0.2, seed=0, n_samples=10_000,
                                options={"n_samples": 100, "n_features": 3, "threads": 2})
    assert len(data.x_train) + len(data.x_val) == 100 and data.n_features == 3


def test_synthetic_is_learnable() -> None:
    from sklearn.linear_model import LogisticRegression

    data = load_tabular_dataset("synthetic", val_fraction=0.25, seed=0, n_samples=1000)
    model = LogisticRegression(max_iter=1000).fit(data.x_train, data.y_train)
    assert model.score(data.x_val, data.y_val) > 0.6  # chance is 1/3; seeded, so no flakes


def test_synthetic_with_the_fewest_features() -> None:
    data = load_tabular_dataset(
        "synthetic", val_fraction=0.2, seed=0, n_samples=50, n_features=1, n_classes=2
    )
    assert data.x_train.shape == (40, 1)


@pytest.mark.parametrize(
    ("sizes", "text"),
    [
        ({"n_features": 2, "n_classes": 5}, "5 classes need at least 3 features"),
        ({"n_samples": 3_000_000, "n_features": 200}, "must be <= 2147483648"),
        ({"n_samples": 0}, "must be >= n_classes"),
        ({"n_classes": 1}, "must be >= 2"),
    ],
)
def test_impossible_or_too_large_synthetic_tables_fail_the_trial(sizes, text) -> None:
    with pytest.raises(TrialFailed, match=text):
        load_tabular_dataset("synthetic", val_fraction=0.2, seed=0, **sizes)


def test_unknown_dataset_fails_the_trial() -> None:
    with pytest.raises(TrialFailed, match=r"unknown dataset 'titanic'; known: iris, wine"):
        load_tabular_dataset("titanic", val_fraction=0.2, seed=0)
    with pytest.raises(TrialFailed, match=r"unknown dataset 'imagenet'; known: digits, mnist"):
        load_image_dataset("imagenet", val_fraction=0.2, seed=0)


def test_too_few_samples_for_the_classes_fails_the_trial() -> None:
    with pytest.raises(TrialFailed, match="cannot split dataset 'synthetic'"):
        load_tabular_dataset(
            "synthetic", val_fraction=0.1, seed=0, n_samples=50, n_features=10, n_classes=20
        )


# --- images ----------------------------------------------------------------------------------
def assert_images(data, shape: tuple[int, int, int], n: int, n_classes: int) -> None:
    assert data.input_shape == shape
    assert len(data.x_train) + len(data.x_val) == n
    assert data.x_train.dtype == data.x_val.dtype == np.float32
    assert data.y_train.dtype == data.y_val.dtype == np.int64
    assert data.x_train.min() >= 0 and data.x_train.max() <= 1
    assert data.n_classes == n_classes
    assert set(np.unique(data.y_val)) == set(range(n_classes))


def test_digits() -> None:
    assert_images(load_image_dataset("digits", val_fraction=0.2, seed=0), (1, 8, 8), 1797, 10)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        d.to_bytes(4, "big") for d in array.shape
    )
    raw = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def write_fake_idx_set(folder: Path, *, gz: bool, side: int = 6, marker: int = 0) -> None:
    """6 images of each of 10 classes (4 training, 2 test); pixel (0, 0) holds the label * 20
    plus `marker`, so a test can tell which files were read."""
    for part, n in (("train", 40), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = np.zeros((n, side, side), dtype=np.uint8)
        images[:, 0, 0] = labels * 20 + marker
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", labels)


def check_labels_follow_pixels(data, marker: int = 0) -> None:
    for x, y in ((data.x_train, data.y_train), (data.x_val, data.y_val)):
        np.testing.assert_allclose(x[:, 0, 0, 0] * 255, y * 20 + marker, atol=1e-3)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_datasets_from_their_folder(tmp_path, name: str, gz: bool) -> None:
    write_fake_idx_set(tmp_path / name, gz=gz)
    data = load_image_dataset(name, val_fraction=0.2, seed=0, data_dir=str(tmp_path))
    assert_images(data, (1, 6, 6), 60, 10)
    check_labels_follow_pixels(data)


def test_idx_files_may_mix_gzipped_and_raw(tmp_path) -> None:
    write_fake_idx_set(tmp_path / "mnist", gz=True)
    gz = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    assert_images(load_image_dataset("mnist", val_fraction=0.2, seed=0, data_dir=tmp_path),
                  (1, 6, 6), 60, 10)


def test_mnist_still_reads_files_straight_in_the_data_dir(tmp_path) -> None:
    write_fake_idx_set(tmp_path, gz=False)
    data = load_image_dataset("mnist", val_fraction=0.2, seed=0, data_dir=str(tmp_path))
    assert_images(data, (1, 6, 6), 60, 10)


def test_the_mnist_folder_comes_first(tmp_path) -> None:
    write_fake_idx_set(tmp_path, gz=False, marker=1)
    write_fake_idx_set(tmp_path / "mnist", gz=True, marker=2)
    check_labels_follow_pixels(
        load_image_dataset("mnist", val_fraction=0.2, seed=0, data_dir=tmp_path), marker=2
    )


def test_mnist_still_reads_keras_npz(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(60, 28, 28), dtype=np.uint8)
    labels = np.arange(60) % 10
    np.savez(tmp_path / "mnist.npz", x_train=images[:40], y_train=labels[:40],
             x_test=images[40:], y_test=labels[40:])
    assert_images(load_image_dataset("mnist", val_fraction=0.2, seed=0, data_dir=tmp_path),
                  (1, 28, 28), 60, 10)


def test_fashion_mnist_does_not_take_mnist_files(tmp_path) -> None:
    write_fake_idx_set(tmp_path / "mnist", gz=True)
    write_fake_idx_set(tmp_path, gz=True)
    with pytest.raises(TrialFailed, match="Fashion-MNIST files not found"):
        load_image_dataset("fashion-mnist", val_fraction=0.2, seed=0, data_dir=tmp_path)


def test_missing_mnist_files_are_named(tmp_path) -> None:
    with pytest.raises(TrialFailed) as e:
        load_image_dataset("mnist", val_fraction=0.2, seed=0, data_dir=str(tmp_path))
    message = str(e.value)
    assert message.startswith("MNIST files not found: missing ")
    for stem in IDX_STEMS:
        assert str(tmp_path / "mnist" / f"{stem}.gz") in message
    assert "without .gz" in message and str(tmp_path / "mnist.npz") in message
    assert "Nothing is downloaded" in message


def test_only_the_missing_files_are_named(tmp_path) -> None:
    write_fake_idx_set(tmp_path / "fashion-mnist", gz=True)
    (tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(TrialFailed) as e:
        load_image_dataset("fashion-mnist", val_fraction=0.2, seed=0, data_dir=tmp_path)
    message = str(e.value)
    assert f"missing {tmp_path / 'fashion-mnist' / 't10k-images-idx3-ubyte.gz'} " in message
    assert "train-images" not in message and "labels" not in message


def test_file_datasets_need_a_data_dir() -> None:
    for name in ("mnist", "fashion-mnist", "cifar10"):
        with pytest.raises(TrialFailed, match=f"dataset '{name}' is read from the server's data directory"):
            load_image_dataset(name, val_fraction=0.2, seed=0)


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (b"\x00\x00\x0d\x03" + b"\x00" * 12, "not an IDX file of unsigned bytes"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x09" + b"\x00" * 3, "truncated or too long"),
    ],
)
def test_broken_idx_files_fail_the_trial(tmp_path, content: bytes, text: str) -> None:
    write_fake_idx_set(tmp_path / "mnist", gz=False)
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").write_bytes(content)
    with pytest.raises(TrialFailed, match=text):
        load_image_dataset("mnist", val_fraction=0.2, seed=0, data_dir=tmp_path)


def test_idx_images_and_labels_must_agree(tmp_path) -> None:
    write_fake_idx_set(tmp_path / "mnist", gz=False)
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte", np.zeros(39, dtype=np.uint8))
    with pytest.raises(TrialFailed, match="disagree"):
        load_image_dataset("mnist", val_fraction=0.2, seed=0, data_dir=tmp_path)


def write_fake_cifar(folder: Path) -> None:
    """Ten 32 x 32 images per batch, one per class; red pixel (0, 0) holds label * 20, green
    pixel (0, 1) 7 and blue pixel (1, 0) 9, to check the channel order."""
    folder.mkdir(parents=True)
    for name in CIFAR_FILES:
        labels = list(range(10))
        data = np.zeros((10, 3 * 32 * 32), dtype=np.uint8)
        data[:, 0] = np.array(labels) * 20
        data[:, 1024 + 1] = 7
        data[:, 2048 + 32] = 9
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"{i}.png".encode() for i in range(10)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar10_from_the_python_batches(tmp_path) -> None:
    write_fake_cifar(tmp_path / "cifar-10-batches-py")
    data = load_image_dataset("cifar10", val_fraction=0.2, seed=0, data_dir=str(tmp_path))
    assert_images(data, (3, 32, 32), 60, 10)
    x = np.concatenate([data.x_train, data.x_val]) * 255
    y = np.concatenate([data.y_train, data.y_val])
    np.testing.assert_allclose(x[:, 0, 0, 0], y * 20, atol=1e-3)
    np.testing.assert_allclose(x[:, 1, 0, 1], 7, atol=1e-3)
    np.testing.assert_allclose(x[:, 2, 1, 0], 9, atol=1e-3)
    assert np.count_nonzero(x) == np.count_nonzero(y) + 2 * len(y)


def test_missing_cifar10_files_are_named(tmp_path) -> None:
    write_fake_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(TrialFailed) as e:
        load_image_dataset("cifar10", val_fraction=0.2, seed=0, data_dir=tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    assert str(e.value).startswith(
        f"CIFAR-10 files not found: missing {folder / 'data_batch_3'}, {folder / 'test_batch'}."
    )
    assert "Nothing is downloaded" in str(e.value)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_cifar_batch_cannot_run_code(tmp_path) -> None:
    write_fake_cifar(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(
        pickle.dumps({b"data": _Exploit(marker), b"labels": []})
    )
    with pytest.raises(TrialFailed, match=r"posix\.mkdir is not something a CIFAR-10 batch"):
        load_image_dataset("cifar10", val_fraction=0.2, seed=0, data_dir=tmp_path)
    assert not marker.exists()


def test_a_cifar_batch_of_the_wrong_shape_is_refused(tmp_path) -> None:
    write_fake_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    )
    with pytest.raises(TrialFailed, match=r"is not a CIFAR-10 batch: expected 'data' as"):
        load_image_dataset("cifar10", val_fraction=0.2, seed=0, data_dir=tmp_path)


def test_synthetic_images_shapes_and_seed() -> None:
    kwargs = {"val_fraction": 0.25, "n_samples": 400, "n_classes": 4, "image_shape": (3, 12, 9)}
    data = load_image_dataset("synthetic-image", seed=5, **kwargs)
    assert_images(data, (3, 12, 9), 400, 4)
    assert np.bincount(np.concatenate([data.y_train, data.y_val])).tolist() == [100] * 4
    again = load_image_dataset("synthetic-image", seed=5, **kwargs)
    np.testing.assert_array_equal(data.x_train, again.x_train)
    np.testing.assert_array_equal(data.y_val, again.y_val)
    other = load_image_dataset("synthetic-image", seed=6, **kwargs)
    assert not np.array_equal(data.x_train, other.x_train)


def test_synthetic_images_default_and_options() -> None:
    assert_images(load_image_dataset("synthetic-image", val_fraction=0.2, seed=0),
                  (1, 16, 16), 2000, 10)
    data = load_image_dataset(
        "synthetic-image", val_fraction=0.2, seed=0,
        options={"n_samples": 60, "n_classes": 3, "image_shape": [2, 4, 5], "device": "cpu"},
    )
    assert_images(data, (2, 4, 5), 60, 3)


@pytest.mark.slow  # trains for seconds
def test_synthetic_images_are_learnable() -> None:
    from sklearn.linear_model import LogisticRegression

    data = load_image_dataset("synthetic-image", val_fraction=0.25, seed=0, n_samples=1200)
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    model = LogisticRegression(max_iter=1000).fit(flat(data.x_train), data.y_train)
    # Chance is 0.1; a linear model reaches about 0.9. Seeded, so it cannot flake.
    assert model.score(flat(data.x_val), data.y_val) > 0.7


def test_synthetic_images_over_two_gib_are_refused() -> None:
    with pytest.raises(TrialFailed, match=r"n_samples x \(channels x height x width x 4 \+ 8\) "
                       r"bytes \(float32 inputs, int64 labels\) is 2621520000 bytes, but must "
                       r"be <= 2147483648"):
        load_image_dataset("synthetic-image", val_fraction=0.2, seed=0, n_samples=10_000,
                           image_shape=(4, 128, 128))


# --- npz -------------------------------------------------------------------------------------
def save_npz(data_dir: Path, name: str = "mine.npz", **arrays) -> Path:
    path = data_dir / "datasets" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def table(n: int = 60, n_features: int = 4, n_classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    return rng.normal(size=(n, n_features)) + 3 * y[:, None], y


def test_npz_table_is_split_and_standardized(tmp_path) -> None:
    x, y = table()
    save_npz(tmp_path, x=x, y=y)
    data = load_tabular_dataset("npz", val_fraction=0.25, seed=0, data_dir=str(tmp_path),
                                npz_file="mine.npz")
    assert len(data.x_train) == 45 and len(data.x_val) == 15
    assert data.n_features == 4 and data.n_classes == 3
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0, atol=1e-5)


def test_npz_with_its_own_validation_set_is_not_split(tmp_path) -> None:
    x, y = table()
    x_val, y_val = table(n=9, seed=1)
    save_npz(tmp_path, "with-val_1.npz", x=x.astype(np.float32), y=y.astype(np.uint8),
             x_val=x_val, y_val=y_val)
    data = load_tabular_dataset("npz", val_fraction=0.25, seed=0, data_dir=tmp_path,
                                options={"npz_file": "with-val_1.npz"})
    assert len(data.x_train) == 60 and len(data.x_val) == 9
    np.testing.assert_array_equal(data.y_val, y_val)
    mean, std = x.mean(axis=0), x.std(axis=0)  # of x only
    np.testing.assert_allclose(data.x_val, (x_val - mean) / std, rtol=1e-4, atol=1e-4)


def test_npz_images(tmp_path) -> None:
    y = np.arange(40) % 4
    images = np.full((40, 5, 5), 51, dtype=np.uint8)  # (n, h, w): one channel
    save_npz(tmp_path, "gray.npz", x=images, y=y)
    data = load_image_dataset("npz", val_fraction=0.25, seed=0, data_dir=tmp_path,
                              npz_file="gray.npz")
    assert_images(data, (1, 5, 5), 40, 4)
    np.testing.assert_allclose(data.x_train, 0.2, atol=1e-6)

    save_npz(tmp_path, "rgb.npz", x=np.full((40, 3, 4, 4), 0.5), y=y)
    data = load_image_dataset("npz", val_fraction=0.25, seed=0, data_dir=tmp_path,
                              npz_file="rgb.npz")
    assert_images(data, (3, 4, 4), 40, 4)


@pytest.mark.parametrize("name", ["../x.npz", "/etc/x.npz", "a/b.npz", "..npz", "x.npy",
                                  "x.npz/", "", "x" * 129 + ".npz", "a\\b.npz", "x.npz\n"])
def test_npz_names_that_could_leave_the_folder_are_refused(tmp_path, name: str) -> None:
    save_npz(tmp_path, x=table()[0], y=table()[1])
    with pytest.raises(InvalidSpecError) as e:
        check_dataset_options("npz", {"npz_file": name})
    assert e.value.field == "trainer.options.npz_file"
    with pytest.raises(TrialFailed, match=r"npz_file .* is refused"):
        load_tabular_dataset("npz", val_fraction=0.2, seed=0, data_dir=tmp_path,
                             npz_file=name)


def test_a_link_out_of_the_folder_is_refused(tmp_path) -> None:
    outside = tmp_path / "secret.npz"
    np.savez(outside, x=table()[0], y=table()[1])
    (tmp_path / "server" / "datasets").mkdir(parents=True)
    (tmp_path / "server" / "datasets" / "link.npz").symlink_to(outside)
    check_dataset_options("npz", {"npz_file": "link.npz"})  # the name is fine; no I/O there
    with pytest.raises(TrialFailed, match="leads out of"):
        load_tabular_dataset("npz", val_fraction=0.2, seed=0, data_dir=tmp_path / "server",
                             npz_file="link.npz")


def test_a_missing_npz_file_is_named(tmp_path) -> None:
    with pytest.raises(TrialFailed) as e:
        load_tabular_dataset("npz", val_fraction=0.2, seed=0, data_dir=tmp_path,
                             npz_file="absent.npz")
    assert str(tmp_path.resolve() / "datasets" / "absent.npz") in str(e.value)
    assert "Nothing is downloaded" in str(e.value)


def test_npz_needs_a_file_name_and_the_server_data_dir(tmp_path) -> None:
    with pytest.raises(TrialFailed, match="needs the trainer option `npz_file`"):
        load_tabular_dataset("npz", val_fraction=0.2, seed=0, data_dir=tmp_path)
    with pytest.raises(TrialFailed, match="needs the server's data directory"):
        load_image_dataset("npz", val_fraction=0.2, seed=0, npz_file="x.npz")


x_ok, y_ok = table()


@pytest.mark.parametrize(
    ("arrays", "text"),
    [
        ({"x": x_ok}, "lacks the array"),
        ({"x": x_ok, "y": y_ok, "z": y_ok}, "holds z, but an npz dataset holds only x, y"),
        ({"x": x_ok, "y": y_ok, "x_val": x_ok}, "both x_val and y_val, or neither"),
        ({"x": x_ok, "y": y_ok.astype(float)}, "labels must be integers"),
        ({"x": x_ok, "y": y_ok + 1}, r"y never holds 0 \(do the labels start at 1\?\)"),
        ({"x": x_ok, "y": np.where(y_ok == 1, 2, y_ok)}, "y never holds 1"),
        ({"x": x_ok, "y": y_ok - 1}, "labels must be >= 0"),
        ({"x": x_ok, "y": y_ok * 0}, "holds only the label 0"),
        ({"x": x_ok, "y": y_ok * 10**12}, "holds the label 2000000000000"),
        ({"x": x_ok, "y": y_ok[:-1]}, r"has shape \(59,\), but must be \(60,\)"),
        ({"x": x_ok, "y": y_ok[:, None]}, r"has shape \(60, 1\)"),
        ({"x": np.where(x_ok > 3, np.nan, x_ok), "y": y_ok}, "NaN or infinite"),
        ({"x": x_ok * 1e300, "y": y_ok}, "NaN or infinite"),
        ({"x": x_ok[:, :, None], "y": y_ok}, r"must be \(n, n_features\)"),
        ({"x": x_ok.astype(complex), "y": y_ok}, "must hold real numbers"),
        ({"x": x_ok.astype(str), "y": y_ok}, "must hold real numbers"),
        ({"x": x_ok, "y": y_ok, "x_val": x_ok[:, :3], "y_val": y_ok}, "x_val has samples"),
        ({"x": x_ok, "y": y_ok, "x_val": x_ok, "y_val": y_ok + 5}, "y_val holds the label 7"),
        ({"x": np.array([object()] * 60), "y": y_ok}, "cannot read the arrays"),
    ],
)
def test_bad_npz_contents_are_refused(tmp_path, arrays, text: str) -> None:
    save_npz(tmp_path, **arrays)
    with pytest.raises(TrialFailed, match=text):
        load_tabular_dataset("npz", val_fraction=0.2, seed=0, data_dir=tmp_path,
                             npz_file="mine.npz")


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (np.full((40, 4, 4), 1.5), r"values in \[1.5, 1.5\], but float images must lie in"),
        (np.full((40, 4, 4), 3, dtype=np.int32), "images must be uint8"),
        (np.zeros((40, 16)), "images must be"),
    ],
)
def test_bad_npz_images_are_refused(tmp_path, x, text: str) -> None:
    save_npz(tmp_path, x=x, y=np.arange(40) % 4)
    with pytest.raises(TrialFailed, match=text):
        load_image_dataset("npz", val_fraction=0.2, seed=0, data_dir=tmp_path,
                           npz_file="mine.npz")


def test_files_that_are_not_npz_archives_are_refused(tmp_path) -> None:
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "text.npz").write_text("hello")
    np.save(tmp_path / "datasets" / "lone.npy", x_ok)
    (tmp_path / "datasets" / "lone.npy").rename(tmp_path / "datasets" / "lone.npz")
    for name, text in (("text.npz", "cannot read"), ("lone.npz", "holds a single array")):
        with pytest.raises(TrialFailed, match=text):
            load_tabular_dataset("npz", val_fraction=0.2, seed=0, data_dir=tmp_path,
                                 npz_file=name)


# --- options checked at submission -----------------------------------------------------------
@pytest.mark.parametrize(
    ("dataset", "options"),
    [
        ("digits", {}),
        ("mnist", {"val_fraction": 0.1, "threads": 2}),
        ("cifar10", {}),
        ("npz", {"npz_file": "my-data_v1.2.npz"}),
        ("synthetic", {"n_samples": 50, "n_features": 1, "n_classes": 2}),
        ("synthetic-image", {"n_samples": 1_000_000, "image_shape": [1, 16, 16]}),
        ("synthetic-image", {"image_shape": (64, 4, 1024), "n_samples": 100, "n_classes": 10}),
        ("synthetic", {"n_samples": 50, "n_classes": 10, "val_fraction": 0.2}),
    ],
)
def test_good_dataset_options_pass(dataset: str, options) -> None:
    check_dataset_options(dataset, options)


@pytest.mark.parametrize(
    ("dataset", "options", "field", "text"),
    [
        ("titanic", {}, "trainer.dataset", "must be one of digits, mnist"),
        ("npz", {}, "trainer.options.npz_file", "is required by the dataset 'npz'"),
        ("npz", {"npz_file": 3}, "trainer.options.npz_file", "must be a file name"),
        ("digits", {"npz_file": "x.npz"}, "trainer.options.npz_file",
         "only applies to the dataset 'npz', not 'digits'"),
        ("iris", {"n_samples": 100}, "trainer.options.n_samples", "only applies to the datasets"),
        ("synthetic-image", {"n_features": 3}, "trainer.options.n_features",
         "only applies to the dataset 'synthetic'"),
        ("synthetic", {"image_shape": [1, 8, 8]}, "trainer.options.image_shape",
         "only applies to the dataset 'synthetic-image'"),
        ("synthetic", {"n_samples": 49}, "trainer.options.n_samples", r"in \[50, 1000000\]"),
        ("synthetic", {"n_samples": True}, "trainer.options.n_samples", "must be an integer"),
        ("synthetic", {"n_samples": 100.0}, "trainer.options.n_samples", "must be an integer"),
        ("synthetic", {"n_features": 10_001}, "trainer.options.n_features", r"\[1, 10000\]"),
        ("synthetic-image", {"n_classes": 1}, "trainer.options.n_classes", r"\[2, 1000\]"),
        ("synthetic-image", {"image_shape": [1, 16]}, "trainer.options.image_shape",
         "must be \\[channels, height, width\\] with channels in \\[1, 64\\]"),
        ("synthetic-image", {"image_shape": [1, 3, 16]}, "trainer.options.image_shape",
         r"height in \[4, 1024\]"),
        ("synthetic-image", {"image_shape": "1,16,16"}, "trainer.options.image_shape",
         "must be"),
        ("synthetic", {"n_features": 2, "n_classes": 5}, "trainer.options.n_features",
         "5 classes need at least 3 features"),
        ("synthetic", {"n_samples": 1_000_000, "n_features": 1000}, "trainer.options.n_samples",
         "must be <= 2147483648"),
        ("synthetic-image", {"n_samples": 1_000_000, "image_shape": [3, 32, 32]},
         "trainer.options.n_samples", "12296000000 bytes, but must be <= 2147483648"),
        ("synthetic", {"n_samples": 100, "n_classes": 30}, "trainer.options.n_samples",
         "stratified split needs at least 30 samples"),
        ("synthetic-image", {"n_samples": 100, "n_classes": 11, "val_fraction": 0.1},
         "trainer.options.n_samples", "it gives 10 to validation"),
    ],
)
def test_bad_dataset_options_name_the_field(dataset, options, field, text) -> None:
    with pytest.raises(InvalidSpecError, match=text) as e:
        check_dataset_options(dataset, options)
    assert e.value.field == field


def test_the_operator_sets_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    options = {"n_samples": 20_000, "n_features": 20}  # 20,000 x 88 bytes: 1.7 MiB
    check_dataset_options("synthetic", options)
    monkeypatch.setenv("EDGETUNE_MAX_DATASET_BYTES", str(1 << 20))
    with pytest.raises(InvalidSpecError, match="EDGETUNE_MAX_DATASET_BYTES") as e:
        check_dataset_options("synthetic", options)
    assert e.value.field == "trainer.options.n_samples"


def test_the_bound_is_two_gib_of_inputs_and_labels() -> None:
    assert max_dataset_bytes() == 2**31
    per_sample = 4 * 64 * 64 + 8  # float32 pixels and an int64 label
    check_dataset_options("synthetic-image",
                          {"n_samples": 2**31 // per_sample, "image_shape": [1, 64, 64]})
    with pytest.raises(InvalidSpecError, match=r"trainer\.options\.n_samples"):
        check_dataset_options(
            "synthetic-image", {"n_samples": 2**31 // per_sample + 1, "image_shape": [1, 64, 64]},
        )


# --- memory ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dataset", "options", "cells"),
    [
        ("synthetic", {"n_samples": 200_000, "n_features": 100}, 100),
        ("synthetic", {"n_samples": 10_000, "n_features": 2000, "n_classes": 50}, 2000),
        ("synthetic-image", {"n_samples": 20_000, "image_shape": [3, 32, 32]}, 3 * 32 * 32),
    ],
)
def test_a_generated_dataset_takes_about_its_declared_size(dataset, options, cells) -> None:
    """The bound on a generated dataset means memory: what it holds is its declared size
    (float32 inputs and int64 labels, both splits), and the peak while it is generated,
    split and standardized stays within 1.5 times that (numpy reports its buffers to
    tracemalloc). Measured as ratios, not times."""
    import tracemalloc

    load = load_tabular_dataset if dataset == "synthetic" else load_image_dataset
    load(dataset, val_fraction=0.2, seed=0, options={**options, "n_samples": 1000})  # imports
    declared = synthetic_bytes(options["n_samples"], cells)
    check_dataset_options(dataset, options)
    tracemalloc.start()
    try:
        data = load(dataset, val_fraction=0.2, seed=0, options=options)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    arrays = (data.x_train, data.x_val, data.y_train, data.y_val)
    assert sum(a.nbytes for a in arrays) == declared
    assert data.x_train.dtype == data.x_val.dtype == np.float32
    # The splits are views of one array, not copies.
    assert data.x_train.base is not None and data.x_train.base is data.x_val.base
    assert held < 1.05 * declared
    assert peak < 1.5 * declared, f"peak {peak / declared:.2f} x the declared size"


def test_a_standardized_table_is_the_same_in_chunks() -> None:
    """Standardizing in place, chunk by chunk, gives numpy's statistics of the whole."""
    data = load_tabular_dataset("synthetic", val_fraction=0.2, seed=0,
                                options={"n_samples": 300_000, "n_features": 30})
    assert len(data.x_train) > 2**22 // (30 * 4)  # more rows than one chunk
    np.testing.assert_allclose(data.x_train.mean(axis=0, dtype=np.float64), 0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=0, dtype=np.float64), 1, atol=1e-4)
