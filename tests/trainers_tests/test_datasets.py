"""The tabular datasets: shapes, standardization on the training split, seeded splits."""

from __future__ import annotations

import numpy as np
import pytest

from edgetune.errors import TrialFailed
from edgetune.trainers.datasets import TABULAR_DATASETS, load_tabular_dataset

SHAPES = {"iris": (150, 4, 3), "wine": (178, 13, 3), "breast-cancer": (569, 30, 2),
          "synthetic": (2000, 20, 3)}


@pytest.mark.parametrize("name", TABULAR_DATASETS)
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


@pytest.mark.parametrize("name", TABULAR_DATASETS)
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


def test_synthetic_with_the_fewest_features() -> None:
    data = load_tabular_dataset(
        "synthetic", val_fraction=0.2, seed=0, n_samples=50, n_features=1, n_classes=2
    )
    assert data.x_train.shape == (40, 1)


def test_unknown_dataset_fails_the_trial() -> None:
    with pytest.raises(TrialFailed, match=r"unknown dataset 'titanic'; known: iris, wine"):
        load_tabular_dataset("titanic", val_fraction=0.2, seed=0)


def test_too_few_samples_for_the_classes_fails_the_trial() -> None:
    with pytest.raises(TrialFailed, match="cannot split dataset 'synthetic'"):
        load_tabular_dataset(
            "synthetic", val_fraction=0.1, seed=0, n_samples=50, n_features=10, n_classes=20
        )
