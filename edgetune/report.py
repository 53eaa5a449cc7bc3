"""A job's report as one self-contained HTML file: summary, front, hypervolume, parameter
importance, the best model per constraint and the front's artifacts. Works offline.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgetune.plots import (
    figure_svg,
    front_figure,
    front_table_html,
    html_page,
    hypervolume_figure,
    params_html,
)
from edgetune.schemas import JobPublic, ParetoPublic, TrialPublic
from edgetune.spec import ConstraintSpec

SUFFIXES = (".html", ".htm")
#: Fewer samples than this give no importance: a correlation of two points is always 1.
MIN_SAMPLES = 3


@dataclass(frozen=True)
class ParamImportance:
    """How strongly one parameter goes with each objective, from 0 (not at all) to 1."""

    name: str
    kind: str  # "numeric" (|Spearman rho|) or "categorical" (correlation ratio eta)
    scores: dict[str, float | None] = field(default_factory=dict)  # None: too few samples
    n: int = 0  # completed trials that set the parameter


def write_report(
    path: Path,
    *,
    job: JobPublic,
    front: ParetoPublic,
    trials: list[TrialPublic],
    hypervolume_history: list[tuple[int, float]] | None = None,
) -> Path:
    """Write the report of `job` to `path` (.html) and return `path`.

    `front` is best fetched with dominated trials included, so the figure shows them too;
    `hypervolume_history` holds (trial number, hypervolume) pairs, in completion order.
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(
            f"cannot write {path.name!r}: the suffix must be one of {', '.join(SUFFIXES)}"
        )
    sha256 = {t.number: d for t in trials if (d := artifact_sha256(t)) is not None}
    sections = [
        _section("Summary", _summary(job)),
        _section("Pareto front", f'<div class="figure">{figure_svg(front_figure(front))}</div>'),
    ]
    if hypervolume_history is not None:
        sections.append(
            _section(
                "Hypervolume",
                f'<div class="figure">{figure_svg(hypervolume_figure(hypervolume_history))}</div>',
            )
        )
    sections += [
        _section("Parameter importance", _importance_html(job, trials)),
        _section("Best model per constraint", _best_per_constraint_html(job, trials, sha256)),
        _section("Front trials", front_table_html(front, sha256=sha256)),
    ]
    page = html_page(f"edgetune report: {job.name}", "\n".join(sections))
    path.write_text(page, encoding="utf-8")
    return path


def artifact_sha256(trial: TrialPublic) -> str | None:
    """The digest of the trial's exported model, when it has one."""
    artifact = trial.user_attrs.get("artifact")
    digest = artifact.get("sha256") if isinstance(artifact, dict) else None
    return digest if isinstance(digest, str) else None


# --- parameter importance -------------------------------------------------------------------
def parameter_importance(
    trials: Sequence[TrialPublic], objectives: Sequence[str]
) -> list[ParamImportance]:
    """Per parameter and objective, over completed trials: |Spearman rho| for numeric
    parameters, the correlation ratio eta for categorical ones. Most important first.

    One parameter at a time: interactions are not seen, and with few trials the numbers are
    noisy. A parameter a trial does not set (a conditional one) leaves that trial out.
    """
    complete = [t for t in trials if t.state == "complete" and t.values]
    names = sorted({name for t in complete for name in t.params})
    out: list[ParamImportance] = []
    for name in names:
        setting = [t for t in complete if name in t.params]
        numeric = all(_is_number(t.params[name]) for t in setting)
        scores: dict[str, float | None] = {}
        for objective in objectives:
            used = [t for t in setting if math.isfinite((t.values or {}).get(objective, math.nan))]
            y = np.array([(t.values or {})[objective] for t in used], dtype=np.float64)
            if numeric:
                x = np.array([float(t.params[name]) for t in used], dtype=np.float64)
                scores[objective] = _abs_spearman(x, y)
            else:
                scores[objective] = _correlation_ratio([repr(t.params[name]) for t in used], y)
        out.append(
            ParamImportance(
                name=name,
                kind="numeric" if numeric else "categorical",
                scores=scores,
                n=len(setting),
            )
        )
    return sorted(
        out, key=lambda p: -max((s for s in p.scores.values() if s is not None), default=-1.0)
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _average_ranks(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Ties share the mean of the ranks they span, as Spearman's rho on tied data requires.
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def _abs_spearman(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float | None:
    if len(x) < MIN_SAMPLES:
        return None
    rx, ry = _average_ranks(x), _average_ranks(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return None  # a constant has no correlation with anything
    return float(min(1.0, abs(np.corrcoef(rx, ry)[0, 1])))


def _correlation_ratio(labels: list[str], y: npt.NDArray[np.float64]) -> float | None:
    if len(y) < MIN_SAMPLES:
        return None
    groups: dict[str, list[float]] = {}
    for label, value in zip(labels, y, strict=True):
        groups.setdefault(label, []).append(float(value))
    # One group explains nothing; one trial per group "explains" everything: both meaningless.
    if len(groups) < 2 or len(groups) == len(y):
        return None
    mean = float(y.mean())
    total = float(np.sum((y - mean) ** 2))
    if total == 0:
        return None
    between = sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups.values())
    return float(min(1.0, math.sqrt(between / total)))


def _importance_html(job: JobPublic, trials: Sequence[TrialPublic]) -> str:
    objectives = job.spec.metric_names
    rows = parameter_importance(trials, objectives)
    n_complete = sum(1 for t in trials if t.state == "complete" and t.values)
    method = (
        f'<p class="note">Computed over {n_complete} completed trials, one parameter at a '
        "time: for numeric parameters the absolute Spearman rank correlation |&rho;| with each "
        "objective, for categorical ones the correlation ratio &eta; (how much of the objective's "
        "variance the category means explain). Both run from 0 (no association) to 1. They "
        "do not see interactions between parameters and are noisy with few trials; — means "
        f"too few trials (under {MIN_SAMPLES}) or no variation.</p>"
    )
    if not rows:
        return method + '<p class="note">No completed trials with parameters yet.</p>'
    e = html.escape
    head = "".join(f"<th>{e(o)}</th>" for o in objectives)
    lines = ["<table>", f"<tr><th>parameter</th><th>kind</th><th>trials</th>{head}</tr>"]
    for p in rows:
        metric = "|&rho;|" if p.kind == "numeric" else "&eta;"
        cells = "".join(
            f'<td class="num">{"—" if p.scores[o] is None else f"{p.scores[o]:.2f}"}</td>'
            for o in objectives
        )
        lines.append(
            f"<tr><td>{e(p.name)}</td><td>{p.kind} ({metric})</td>"
            f'<td class="num">{p.n}</td>{cells}</tr>'
        )
    lines.append("</table>")
    return method + "\n".join(lines)


# --- best model per constraint --------------------------------------------------------------
def best_per_constraint(
    job: JobPublic, trials: Sequence[TrialPublic]
) -> list[tuple[ConstraintSpec, TrialPublic | None]]:
    """For each constraint of the job, the completed trial that meets it (others may be
    violated) and is best on the first objective; None when no trial meets it.
    """
    key, direction = job.spec.metric_names[0], job.spec.directions[0]
    sign = -1.0 if direction == "maximize" else 1.0
    scored = [
        t
        for t in trials
        if t.state == "complete" and math.isfinite((t.values or {}).get(key, math.nan))
    ]
    out: list[tuple[ConstraintSpec, TrialPublic | None]] = []
    for constraint in job.spec.constraints:
        feasible = [t for t in scored if _meets(constraint, t)]
        best = min(feasible, key=lambda t: (sign * (t.values or {})[key], t.number), default=None)
        out.append((constraint, best))
    return out


def _measured(trial: TrialPublic, key: str) -> float | None:
    # A constraint on an objective's metric may be stored only among the objective values.
    value = trial.metrics.get(key, (trial.values or {}).get(key))
    return value if value is not None and math.isfinite(value) else None


def _meets(constraint: ConstraintSpec, trial: TrialPublic) -> bool:
    value = _measured(trial, constraint.key)
    return value is not None and constraint.violation(value) <= 0


def _best_per_constraint_html(
    job: JobPublic, trials: Sequence[TrialPublic], sha256: dict[int, str]
) -> str:
    if not job.spec.constraints:
        return '<p class="note">The job has no constraints.</p>'
    e = html.escape
    key, direction = job.spec.metric_names[0], job.spec.directions[0]
    arrow = "↑" if direction == "maximize" else "↓"
    note = (
        f'<p class="note">For each constraint, the completed trial that meets it (it may '
        f"violate the others) and has the best {e(key)} {arrow}.</p>"
    )
    lines = [
        "<table>",
        f"<tr><th>constraint</th><th>trial</th><th>{e(key)} {arrow}</th>"
        "<th>measured</th><th>params</th><th>artifact sha256</th></tr>",
    ]
    for constraint, trial in best_per_constraint(job, trials):
        label = e(f"{constraint.key} {constraint.op} {constraint.bound:g}")
        if trial is None:
            lines.append(
                f'<tr><td>{label}</td><td colspan="5">no completed trial meets it</td></tr>'
            )
            continue
        value = (trial.values or {})[key]
        measured = _measured(trial, constraint.key)
        digest = sha256.get(trial.number)
        lines.append(
            f'<tr><td>{label}</td><td class="num">{trial.number}</td>'
            f'<td class="num">{value:.4g}</td>'
            f'<td class="num">{"—" if measured is None else f"{measured:.4g}"}</td>'
            f"<td>{params_html(trial.params)}</td>"
            + (f"<td><code>{e(digest)}</code></td>" if digest else "<td>—</td>")
            + "</tr>"
        )
    lines.append("</table>")
    return note + "\n".join(lines)


# --- summary --------------------------------------------------------------------------------
def _summary(job: JobPublic) -> str:
    e = html.escape
    p = job.progress
    rows = [
        ("name", job.name),
        ("id", job.id),
        ("status", job.status),
        (
            "progress",
            f"{p.finished} of {p.n_trials} trials finished: {p.complete} complete, "
            f"{p.pruned} pruned, {p.failed} failed; {p.running} running",
        ),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
    ]
    if job.error:
        rows.append(("error", job.error))
    table = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    spec = e(job.spec.model_dump_json(indent=2))
    return f"<table>\n{table}\n</table>\n<h3>Spec</h3>\n<pre>{spec}</pre>"


def _when(moment: datetime | None) -> str:
    return "—" if moment is None else moment.isoformat(sep=" ", timespec="seconds")


def _section(title: str, body: str) -> str:
    return f"<section>\n<h2>{html.escape(title)}</h2>\n{body}\n</section>"
