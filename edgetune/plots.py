"""Figures of a job's Pareto front, written as PNG, SVG or a self-contained HTML page.

Uses matplotlib's object API with the Agg canvas, never pyplot, so it is safe in servers and
threads and leaves matplotlib's global backend alone.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from edgetune.schemas import ObjectivePublic, ParetoPublic, ParetoTrial

SUFFIXES = (".png", ".svg", ".html")
ARROWS = {"minimize": "↓", "maximize": "↑"}

_FRONT_COLOUR = "tab:blue"
_KNEE_COLOUR = "tab:red"
_OTHER_COLOUR = "0.65"
_PNG_DPI = 150
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left;
         vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: 0.75rem; overflow-x: auto; font-size: 0.85rem; }
code { font-size: 0.85rem; word-break: break-all; }
.figure svg { max-width: 100%; height: auto; }
.note { color: #555; font-size: 0.9rem; }
"""


def plot_front(
    front: ParetoPublic, path: Path, *, x: str | None = None, y: str | None = None
) -> Path:
    """Draw `front` to `path` (.png, .svg or .html, by suffix) and return `path`.

    `x` and `y` name the objectives on the axes (default: the first two). With three or more
    objectives and neither given, a second panel shows all of them as parallel coordinates.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"cannot write {path.name!r}: the suffix must be one of {', '.join(SUFFIXES)}"
        )
    fig = front_figure(front, x=x, y=y)
    if suffix == ".png":
        fig.savefig(path, format="png", dpi=_PNG_DPI)
    elif suffix == ".svg":
        path.write_text(figure_svg(fig), encoding="utf-8")
    else:
        body = (
            f'<div class="figure">{figure_svg(fig)}</div>\n'
            f"<h2>Front trials</h2>\n{front_table_html(front)}"
        )
        path.write_text(html_page(f"Pareto front of job {front.job_id}", body), encoding="utf-8")
    return path


# --- figures --------------------------------------------------------------------------------
def front_figure(front: ParetoPublic, *, x: str | None = None, y: str | None = None) -> Figure:
    """The front as a matplotlib figure (Agg canvas attached), as `plot_front` draws it."""
    names = [o.name for o in front.objectives]
    for given in (x, y):
        if given is not None and given not in names:
            raise ValueError(
                f"unknown objective {given!r}; the objectives are: {', '.join(names) or 'none'}"
            )
    if x is not None and x == y:
        raise ValueError(f"`x` and `y` are both {x!r}, but must name two different objectives")
    parallel = x is None and y is None and len(names) >= 3
    x_name, y_name = _axes_names(names, x, y)

    trials = [t for t in front.data if _has_values(t, names)]
    parallel = parallel and bool(trials)
    fig = Figure(figsize=(13, 5.5) if parallel else (7.5, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(_title(front))
    if not trials:
        _say(fig.add_subplot(),
             "no trials on this page" if front.n_complete else "no completed trials yet")
        return fig

    by_name = {o.name: o for o in front.objectives}
    if parallel:
        scatter_ax, parallel_ax = fig.subplots(1, 2, width_ratios=[1.1, 1])
        _draw_scatter(
            fig,
            scatter_ax,
            trials,
            by_name[names[0]],
            by_name[names[1]],
            colour_by=by_name[names[2]],
        )
        _draw_parallel(parallel_ax, trials, front.objectives)
    elif y_name is None:
        # One objective: nothing to trade off, so show it against the trial number.
        _draw_single(fig.add_subplot(), trials, by_name[x_name])
    else:
        _draw_scatter(fig, fig.add_subplot(), trials, by_name[x_name], by_name[y_name])
    return fig


def hypervolume_figure(history: Sequence[tuple[int, float]]) -> Figure:
    """Hypervolume of the feasible front after each completed trial, in completion order.

    `history` holds (trial number, hypervolume) in the order trials completed, as the
    `/hypervolume` endpoint gives it, so the curve never falls.
    """
    fig = Figure(figsize=(7.5, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if not history:
        _say(ax, "no finished trials yet")
        return fig
    ax.plot(
        range(1, len(history) + 1),
        [p[1] for p in history],
        drawstyle="steps-post",
        marker="o",
        markersize=3,
        color=_FRONT_COLOUR,
    )
    ax.set_xlabel("trials completed")
    ax.set_ylabel("hypervolume ↑")
    ax.set_title("Hypervolume of the feasible front")
    ax.grid(alpha=0.3)
    return fig


def figure_svg(fig: Figure) -> str:
    """`fig` as an `<svg>` element to inline in HTML: no XML prolog, DTD or metadata."""
    buffer = io.StringIO()
    # No date or creator, so the same front gives the same file.
    fig.savefig(
        buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None}
    )
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _axes_names(names: list[str], x: str | None, y: str | None) -> tuple[str, str | None]:
    if not names:
        raise ValueError("the front has no objectives to plot")
    if len(names) == 1:
        return names[0], None
    x_name = x if x is not None else next(n for n in names if n != y)
    y_name = y if y is not None else next(n for n in names if n != x_name)
    return x_name, y_name


def _title(front: ParetoPublic) -> str:
    title = (
        f"Job {front.job_id}: {front.front_size} on the Pareto front "
        f"of {front.n_complete} completed trials"
    )
    hypervolume = front.hypervolume
    if hypervolume is not None:
        title += f", hypervolume {hypervolume:.4g}"
    if len(front.data) < front.count:
        title += f"\n(showing {len(front.data)} of {front.count})"
    return title


def _has_values(trial: ParetoTrial, names: list[str]) -> bool:
    return all(math.isfinite(trial.values.get(n, math.nan)) for n in names)


def _label(objective: ObjectivePublic) -> str:
    return f"{objective.name} {ARROWS.get(objective.direction, '')}".strip()


def _draw_scatter(
    fig: Figure,
    ax: Axes,
    trials: list[ParetoTrial],
    x: ObjectivePublic,
    y: ObjectivePublic,
    *,
    colour_by: ObjectivePublic | None = None,
) -> None:
    front = [t for t in trials if t.rank == 0]
    others = [t for t in trials if t.rank != 0]
    for group, marker, label in (
        ([t for t in others if t.feasible], "o", "dominated"),
        ([t for t in others if not t.feasible], "x", "infeasible"),
    ):
        if group:
            ax.scatter(
                [t.values[x.name] for t in group],
                [t.values[y.name] for t in group],
                s=18,
                marker=marker,
                color=_OTHER_COLOUR,
                alpha=0.7,
                label=label,
                zorder=1,
            )

    _draw_staircase(ax, front, x, y)
    xs = [t.values[x.name] for t in front]
    ys = [t.values[y.name] for t in front]
    markers = ["o" if t.feasible else "X" for t in front]
    if colour_by is None:
        for marker in sorted(set(markers)):
            picked = [i for i, m in enumerate(markers) if m == marker]
            ax.scatter(
                [xs[i] for i in picked],
                [ys[i] for i in picked],
                s=36,
                marker=marker,
                color=_FRONT_COLOUR,
                edgecolors="white",
                linewidths=0.5,
                zorder=3,
                label="Pareto front" if marker == "o" else "Pareto front (infeasible)",
            )
    else:
        colours = [t.values[colour_by.name] for t in front]
        points = ax.scatter(
            xs,
            ys,
            c=colours,
            cmap="viridis",
            s=40,
            edgecolors="white",
            linewidths=0.5,
            zorder=3,
            label="Pareto front",
        )
        fig.colorbar(points, ax=ax, label=_label(colour_by))

    for t in front:
        if t.knee:
            kx, ky = t.values[x.name], t.values[y.name]
            ax.scatter(
                [kx],
                [ky],
                marker="*",
                s=260,
                color=_KNEE_COLOUR,
                edgecolors="black",
                linewidths=0.6,
                zorder=4,
                label="knee",
            )
            ax.annotate(
                f"knee (trial {t.number})",
                xy=(kx, ky),
                xytext=(10, 10),
                textcoords="offset points",
                fontsize=9,
                zorder=5,
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.8},
            )
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _draw_staircase(
    ax: Axes, front: list[ParetoTrial], x: ObjectivePublic, y: ObjectivePublic
) -> None:
    # With more than two objectives, front trials need not be a trade-off in the two shown,
    # so the line joins only those no other front trial beats on both: a true 2-D staircase.
    sign = np.array([-1.0 if o.direction == "maximize" else 1.0 for o in (x, y)])
    points = np.array([[t.values[x.name], t.values[y.name]] for t in front]).reshape(-1, 2)
    lower = points * sign
    keep = [
        i
        for i in range(len(lower))
        if not np.any(np.all(lower <= lower[i], axis=1) & np.any(lower < lower[i], axis=1))
    ]
    if len(keep) < 2:
        return
    line = points[keep][np.argsort(points[keep][:, 0], kind="stable")]
    # The region a point dominates lies to its right when x is minimized, to its left when
    # maximized, so the step holds each y after its point (post) or before it (pre).
    where: Literal["pre", "post"] = "post" if x.direction == "minimize" else "pre"
    ax.step(
        line[:, 0], line[:, 1], where=where, color=_FRONT_COLOUR, alpha=0.6, linewidth=1.2, zorder=2
    )


def _draw_single(ax: Axes, trials: list[ParetoTrial], objective: ObjectivePublic) -> None:
    for group, colour, label in (
        ([t for t in trials if t.rank != 0], _OTHER_COLOUR, "others"),
        ([t for t in trials if t.rank == 0], _FRONT_COLOUR, "best"),
    ):
        if group:
            ax.scatter(
                [t.number for t in group],
                [t.values[objective.name] for t in group],
                s=30,
                color=colour,
                label=label,
            )
    ax.set_xlabel("trial number")
    ax.set_ylabel(_label(objective))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _draw_parallel(
    ax: Axes, trials: list[ParetoTrial], objectives: Sequence[ObjectivePublic]
) -> None:
    values = np.array([[t.values[o.name] for o in objectives] for t in trials])
    low, high = values.min(axis=0), values.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    scaled = np.where(high > low, (values - low) / span, 0.5)
    # 1 is the best value seen on every axis, whatever the direction, so good trials run high.
    maximize = np.array([o.direction == "maximize" for o in objectives])
    scaled = np.where(maximize, scaled, 1.0 - scaled)
    positions = np.arange(len(objectives))

    order = sorted(range(len(trials)), key=lambda i: trials[i].rank == 0)  # front drawn on top
    for i in order:
        t = trials[i]
        if t.knee:
            ax.plot(positions, scaled[i], color=_KNEE_COLOUR, linewidth=2.2, zorder=4)
        elif t.rank == 0:
            ax.plot(positions, scaled[i], color=_FRONT_COLOUR, linewidth=1.2, alpha=0.8, zorder=3)
        else:
            ax.plot(
                positions,
                scaled[i],
                color=_OTHER_COLOUR,
                linewidth=0.8,
                alpha=0.5,
                linestyle="-" if t.feasible else ":",
                zorder=1,
            )
    for j in range(len(objectives)):
        best, worst = (high[j], low[j]) if maximize[j] else (low[j], high[j])
        ax.axvline(j, color="0.3", linewidth=0.8, zorder=0)
        ax.text(j, 1.03, _number(float(best)), ha="center", va="bottom", fontsize=7)
        ax.text(j, -0.03, _number(float(worst)), ha="center", va="top", fontsize=7)
    ax.set_xticks(positions, labels=[_label(o) for o in objectives], fontsize=8)
    ax.set_ylim(-0.12, 1.12)
    ax.set_yticks([0.0, 0.5, 1.0])
    ax.set_ylabel("normalized (1 = best seen)")
    ax.set_title("All objectives", fontsize=10)
    handles = [Line2D([], [], color=_FRONT_COLOUR, label="Pareto front")]
    if any(t.knee for t in trials):
        handles.append(Line2D([], [], color=_KNEE_COLOUR, linewidth=2.2, label="knee"))
    if any(t.rank != 0 for t in trials):
        handles.append(Line2D([], [], color=_OTHER_COLOUR, label="dominated"))
    if any(not t.feasible for t in trials):
        handles.append(Line2D([], [], color=_OTHER_COLOUR, linestyle=":", label="infeasible"))
    # Outside the axes: inside, it would hide the best and worst values written on each axis.
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


# --- HTML -----------------------------------------------------------------------------------
def html_page(title: str, body: str) -> str:
    """A whole HTML document around `body` (already escaped), with inline CSS only."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def front_table_html(front: ParetoPublic, *, sha256: Mapping[int, str] | None = None) -> str:
    """A table of the front's trials (rank 0): objectives, params, and artifact digests if given."""
    rows = [t for t in front.data if t.rank == 0]
    if not rows:
        return '<p class="note">No trials on the front yet.</p>'
    e = html.escape
    header = [
        "trial",
        *(_label(o) for o in front.objectives),
        "HV contribution",
        "feasible",
        "params",
    ]
    if sha256 is not None:
        header.append("artifact sha256")
    lines = ["<table>", "<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
    for t in rows:
        knee = " (knee)" if t.knee else ""
        contribution = t.hv_contribution
        cells = [f'<td class="num">{t.number}{knee}</td>']
        cells += [
            f'<td class="num">{e(_number(t.values.get(o.name)))}</td>' for o in front.objectives
        ]
        cells.append(f'<td class="num">{e(_number(contribution))}</td>')
        cells.append(f"<td>{'yes' if t.feasible else 'no'}</td>")
        cells.append(f"<td>{params_html(t.params)}</td>")
        if sha256 is not None:
            digest = sha256.get(t.number)
            cells.append(f"<td><code>{e(digest)}</code></td>" if digest else "<td>—</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    note = ""
    if len(front.data) < front.count:
        note = (
            f'<p class="note">This page holds {len(front.data)} of the {front.count} '
            "ranked trials; front trials on other pages are not listed.</p>\n"
        )
    return note + "\n".join(lines)


def params_html(params: Mapping[str, Any]) -> str:
    """`name=value` pairs, sorted by name, escaped."""
    return ", ".join(
        f"{html.escape(str(k))}={html.escape(_value(v))}" for k, v in sorted(params.items())
    )


def _value(value: Any) -> str:
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str | int | bool) or value is None:
        return str(value)
    return json.dumps(value, default=str)


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    value = float(value)
    if math.isfinite(value) and value.is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _say(ax: Any, message: str) -> None:
    """An empty panel that says why it is empty."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, color="0.4",
            transform=ax.transAxes)
