"""plot_front: PNG, SVG and offline HTML of a hand-built front, with bad input refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from matplotlib.image import imread

from edgetune.plots import plot_front
from edgetune.schemas import ObjectivePublic, ParetoPublic, ParetoTrial

XSS = "<script>alert(1)</script>"
OBJECTIVES = [
    ObjectivePublic(name="accuracy", direction="maximize"),
    ObjectivePublic(name="latency_ms@local", direction="minimize"),
    ObjectivePublic(name="size_bytes", direction="minimize"),
]


def make_front(n_objectives: int = 2, *, empty: bool = False) -> ParetoPublic:
    """Six trade-off trials on the front (trial 3 the knee), four dominated, one infeasible."""
    objectives = OBJECTIVES[:n_objectives]
    rows: list[tuple[int, float, float, float, int, bool]] = []  # number, acc, lat, size, rank
    for i in range(6):
        rows.append((i, 0.6 + 0.06 * i, 1.0 + i**1.5, 9000.0 - 1200 * i, 0, True))
    for i in range(4):
        rows.append((6 + i, 0.55 + 0.05 * i, 3.0 + 2 * i, 9500.0 - 1000 * i, 1 + i % 2, True))
    rows.append((10, 0.95, 0.5, 100.0, 3, False))
    data = [
        ParetoTrial(
            number=n,
            params={"width": 16 + n, "activation": "relu", "note": XSS if n == 2 else "plain"},
            values=dict(zip([o.name for o in objectives], (acc, lat, size), strict=False)),
            metrics={"accuracy": acc, "latency_ms@local": lat, "size_bytes": size},
            rank=rank,
            crowding_distance=None,
            hv_contribution=0.01 * n if rank == 0 else None,
            knee=n == 3,
            feasible=feasible,
            violation=0.0 if feasible else 1.0,
        )
        for n, acc, lat, size, rank, feasible in rows
    ]
    if empty:
        data = []
    return ParetoPublic(
        job_id="job-abc",
        objectives=objectives,
        reference_point={o.name: 1.0 for o in objectives},
        hypervolume=None if empty else 0.42,
        data=data,
        count=len(data),
        n_complete=len(data),
        front_size=sum(1 for t in data if t.rank == 0),
    )


def assert_png(path: Path) -> tuple[int, int]:
    assert path.is_file()
    assert path.stat().st_size > 5_000
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    height, width = image.shape[:2]
    assert height > 100 and width > 100
    return height, width


def test_png_of_two_objectives(tmp_path: Path) -> None:
    out = plot_front(make_front(2), tmp_path / "front.png")
    assert out == tmp_path / "front.png"
    assert_png(out)


def test_png_of_three_objectives_has_a_second_panel(tmp_path: Path) -> None:
    two = assert_png(plot_front(make_front(2), tmp_path / "two.png"))
    three = assert_png(plot_front(make_front(3), tmp_path / "three.png"))
    assert three[1] > two[1]  # wider: scatter plus parallel coordinates


def test_explicit_axes_pick_two_of_three_objectives(tmp_path: Path) -> None:
    svg = plot_front(
        make_front(3), tmp_path / "front.svg", x="size_bytes", y="accuracy"
    ).read_text()
    # matplotlib draws text as paths and keeps the string in a comment beside it.
    assert "size_bytes ↓" in svg and "accuracy ↑" in svg
    assert "All objectives" not in svg


def test_svg_marks_the_knee_and_directions(tmp_path: Path) -> None:
    svg = plot_front(make_front(2), tmp_path / "front.svg").read_text()
    assert svg.startswith("<svg")
    assert "knee (trial 3)" in svg
    assert "accuracy ↑" in svg and "latency_ms@local ↓" in svg
    assert "job-abc" in svg


def test_one_objective_is_plotted_against_the_trial_number(tmp_path: Path) -> None:
    assert_png(plot_front(make_front(1), tmp_path / "front.png"))


@pytest.mark.parametrize("n_objectives", [2, 3])
def test_html_is_self_contained_and_escapes_params(tmp_path: Path, n_objectives: int) -> None:
    text = plot_front(make_front(n_objectives), tmp_path / "front.html").read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "<svg" in text
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.IGNORECASE)
    assert "<link" not in text.lower() and "@import" not in text
    assert XSS not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    # Front trials are in the table; dominated ones are not.
    assert '<td class="num">3 (knee)</td>' in text
    assert '<td class="num">7</td>' not in text


def test_unknown_objective_names_the_objectives(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'params'.*accuracy, latency_ms@local"):
        plot_front(make_front(2), tmp_path / "front.png", x="params")
    with pytest.raises(ValueError, match="unknown objective"):
        plot_front(make_front(2), tmp_path / "front.png", y="nope")
    assert not (tmp_path / "front.png").exists()


def test_same_objective_on_both_axes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="two different objectives"):
        plot_front(make_front(2), tmp_path / "front.png", x="accuracy", y="accuracy")


@pytest.mark.parametrize("name", ["front.jpg", "front.pdf", "front"])
def test_bad_suffix_names_the_allowed_ones(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"\.png, \.svg, \.html"):
        plot_front(make_front(2), tmp_path / name)
    assert not (tmp_path / name).exists()


def test_suffix_is_case_insensitive(tmp_path: Path) -> None:
    assert_png(plot_front(make_front(2), tmp_path / "FRONT.PNG"))


@pytest.mark.parametrize("suffix", [".png", ".svg", ".html"])
def test_empty_front_still_writes_a_figure(tmp_path: Path, suffix: str) -> None:
    out = plot_front(make_front(3, empty=True), tmp_path / f"front{suffix}")
    assert out.stat().st_size > 0
    if suffix == ".png":
        assert_png(out)
    else:
        assert "no completed trials yet" in out.read_text()
