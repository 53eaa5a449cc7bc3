"""The data directory's layout comes from `Settings`, in one object; the backends take it
instead of guessing the data directory from the artifacts folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetune.devices import MeasureConfig
from edgetune.search.backends import OptunaBackend
from edgetune.settings import DataLayout, Settings


def test_settings_lay_out_the_data_directory(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    layout = settings.layout
    root = (tmp_path / "data").resolve()
    assert layout == DataLayout(root)
    assert (layout.artifacts, layout.datasets, layout.models, layout.token, layout.ray) == (
        root / "artifacts", root / "datasets", root / "models", root / "token", root / "ray")
    assert layout.cache("study-1") == root / "cache" / "study-1"
    assert settings.artifact_dir == layout.artifacts and settings.token_file == layout.token
    assert settings.url == f"sqlite:///{root / 'edgetune.db'}"


def test_a_backend_takes_the_layout_or_an_artifacts_folder(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    latency = MeasureConfig()
    given = OptunaBackend(storage_url="sqlite://", layout=layout, latency=latency,
                          context=None)
    assert given.layout == layout
    derived = OptunaBackend(storage_url="sqlite://", artifact_dir=str(tmp_path / "artifacts"),
                            latency=latency)
    assert derived.layout == layout
    with pytest.raises(ValueError, match="`artifacts` folder"):
        OptunaBackend(storage_url="sqlite://", artifact_dir=str(tmp_path / "models"),
                      latency=latency)
