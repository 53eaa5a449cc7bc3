"""write_report: every section, the best model per constraint, honest importances, escaping."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgetune.report import best_per_constraint, parameter_importance, write_report
from edgetune.schemas import (
    JobProgress,
    JobPublic,
    ObjectivePublic,
    ParetoPublic,
    ParetoTrial,
    TrialPublic,
)
from edgetune.spec import JobSpec

XSS = "<script>alert(1)</script>"
SECTIONS = [
    "Summary",
    "Pareto front",
    "Hypervolume",
    "Parameter importance",
    "Best model per constraint",
    "Front trials",
]
# number: (accuracy, latency_ms@local, size_bytes, width, activation)
TABLE = {
    0: (0.70, 1.0, 2000.0, 8, "relu"),
    1: (0.80, 2.0, 4000.0, 16, "relu"),
    2: (0.85, 3.5, 4800.0, 24, "gelu"),  # best within size_bytes <= 5000
    3: (0.90, 5.0, 8000.0, 32, "gelu"),  # best overall, too big
    4: (0.60, 1.5, 3000.0, 12, "relu"),  # dominated by trial 0
    5: (0.75, 1.2, 2500.0, 10, "relu"),  # best within latency <= 1.2
}


def make_job() -> JobPublic:
    spec = JobSpec.model_validate(
        {
            "name": "t",
            "objectives": [{"name": "accuracy"}, {"name": "latency_ms"}, {"name": "size_bytes"}],
            "constraints": [
                {"metric": "size_bytes", "op": "<=", "bound": 5000},
                {"metric": "latency_ms", "op": "<=", "bound": 1.2},
                {"metric": "accuracy", "op": ">=", "bound": 0.99},
            ],
            "trainer": {"options": {"note": XSS}},
        }
    )
    return JobPublic(
        id="job-123",
        name="t",
        status="succeeded",
        study_name="edgetune-job-123",
        created_at=datetime(2025, 1, 1, 12, 0, tzinfo=UTC),
        finished_at=datetime(2025, 1, 1, 13, 0, tzinfo=UTC),
        error=XSS,
        spec=spec,
        progress=JobProgress(n_trials=8, complete=6, pruned=1, failed=1),
    )


def make_trials() -> list[TrialPublic]:
    trials = [
        TrialPublic(
            number=n,
            state="complete",
            params={"width": width, "activation": activation, "note": XSS},
            values={"accuracy": acc, "latency_ms@local": lat, "size_bytes": size},
            metrics={"accuracy": acc, "latency_ms@local": lat, "size_bytes": size},
            intermediate_values={},
            user_attrs={"artifact": {"sha256": f"{n:x}" * 64}} if n != 1 else {},
        )
        for n, (acc, lat, size, width, activation) in TABLE.items()
    ]
    trials.append(
        TrialPublic(
            number=6,
            state="pruned",
            params={"width": 99, "activation": "relu"},
            values=None,
            metrics={},
            intermediate_values={0: 0.1},
        )
    )
    return trials


def make_front(trials: list[TrialPublic]) -> ParetoPublic:
    data = [
        ParetoTrial(
            number=t.number,
            params=t.params,
            values=t.values or {},
            metrics=t.metrics,
            rank=1 if t.number == 4 else 0,
            crowding_distance=None,
            hv_contribution=None if t.number == 4 else 0.01,
            knee=t.number == 1,
            feasible=True,
            violation=0.0,
        )
        for t in trials
        if t.state == "complete"
    ]
    return ParetoPublic(
        job_id="job-123",
        objectives=[
            ObjectivePublic(name="accuracy", direction="maximize"),
            ObjectivePublic(name="latency_ms@local", direction="minimize"),
            ObjectivePublic(name="size_bytes", direction="minimize"),
        ],
        hypervolume=0.3,
        data=data,
        count=len(data),
        n_complete=len(data),
        front_size=len(data) - 1,
    )


def section(text: str, title: str) -> str:
    start = text.index(f"<h2>{title}</h2>")
    return text[start : text.index("</section>", start)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One report for the tests that only read it (writing it takes seconds: the parameter
    importances)."""
    tmp_path = tmp_path_factory.mktemp("report")
    trials = make_trials()
    out = write_report(
        tmp_path / "report.html",
        job=make_job(),
        front=make_front(trials),
        trials=trials,
        hypervolume_history=[(0, 0.1), (1, 0.2), (2, 0.25), (3, 0.3), (4, 0.3), (5, 0.3)],
    )
    assert out == tmp_path / "report.html"
    return out.read_text()


def test_report_has_every_section(report: str) -> None:
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in report
    assert report.count("<svg") == 2  # the front and the hypervolume curve


def test_report_is_self_contained(report: str) -> None:
    assert "<script" not in report.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", report, re.IGNORECASE)
    assert "<link" not in report.lower() and "@import" not in report


def test_user_strings_are_escaped(report: str) -> None:
    assert XSS not in report
    # In the job's error, the spec's trainer options and the params of each trial.
    assert report.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3


def test_summary_shows_the_job_and_its_spec(report: str) -> None:
    summary = section(report, "Summary")
    assert "job-123" in summary and "succeeded" in summary
    assert "8 of 8 trials finished: 6 complete, 1 pruned, 1 failed" in summary
    assert "<pre>" in summary and "&quot;size_bytes&quot;" in summary


def test_best_model_per_constraint(report: str) -> None:
    best = section(report, "Best model per constraint")
    rows = re.findall(r"<tr><td>(.*?)</td><td[^>]*>(.*?)</td>", best)
    assert rows == [
        ("size_bytes &lt;= 5000", "2"),
        ("latency_ms@local &lt;= 1.2", "5"),
        ("accuracy &gt;= 0.99", "no completed trial meets it"),
    ]
    assert "2" * 64 in best  # trial 2's artifact digest


def test_front_trials_list_their_artifacts(report: str) -> None:
    table = section(report, "Front trials")
    for n in (0, 2, 3, 5):
        assert f"{n:x}" * 64 in table
    assert "4" * 64 not in table  # dominated
    assert "1 (knee)" in table


def test_importance_says_its_method(report: str) -> None:
    importance = section(report, "Parameter importance")
    assert "Spearman" in importance and "correlation ratio" in importance
    assert "over 6 completed trials" in importance
    for name in ("width", "activation"):
        assert f"<td>{name}</td>" in importance


def test_hypervolume_section_only_when_history_given(tmp_path: Path) -> None:
    trials = make_trials()
    text = write_report(
        tmp_path / "r.html", job=make_job(), front=make_front(trials), trials=trials
    ).read_text()
    assert "<h2>Hypervolume</h2>" not in text
    assert text.count("<svg") == 1


def test_report_of_a_job_without_trials(tmp_path: Path) -> None:
    front = ParetoPublic(
        job_id="job-123",
        objectives=[ObjectivePublic(name="accuracy", direction="maximize")],
        data=[],
        n_complete=0,
        front_size=0,
    )
    text = write_report(
        tmp_path / "r.html", job=make_job(), front=front, trials=[], hypervolume_history=[]
    ).read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in text
    assert "no completed trials yet" in text and "no finished trials yet" in text


def test_report_refuses_other_suffixes(tmp_path: Path) -> None:
    trials = make_trials()
    with pytest.raises(ValueError, match=r"\.html"):
        write_report(tmp_path / "r.pdf", job=make_job(), front=make_front(trials), trials=trials)


def test_best_per_constraint_picks_by_the_first_objectives_direction() -> None:
    job = make_job()
    picks = {c.key: t.number if t else None for c, t in best_per_constraint(job, make_trials())}
    assert picks == {"size_bytes": 2, "latency_ms@local": 5, "accuracy": None}


def _trial(number: int, params: dict[str, object], accuracy: float) -> TrialPublic:
    return TrialPublic(
        number=number,
        state="complete",
        params=params,
        values={"accuracy": accuracy},
        metrics={},
        intermediate_values={},
    )


def test_importance_of_a_monotone_numeric_parameter_is_one() -> None:
    trials = [_trial(i, {"lr": 10.0**-i}, 0.5 + 0.01 * i**2) for i in range(6)]
    (lr,) = parameter_importance(trials, ["accuracy"])
    assert lr.kind == "numeric" and lr.n == 6
    assert lr.scores["accuracy"] == pytest.approx(1.0)


def test_spearman_averages_tied_ranks() -> None:
    # x ranks (1, 2.5, 2.5, 4) against y ranks (1, 2, 3, 4): rho = 4.5 / sqrt(4.5 * 5).
    trials = [_trial(i, {"w": w}, a) for i, (w, a) in enumerate([(1, 1), (2, 2), (2, 3), (3, 4)])]
    (w,) = parameter_importance(trials, ["accuracy"])
    assert w.scores["accuracy"] == pytest.approx(math.sqrt(0.9))


def test_importance_of_a_categorical_parameter_is_the_correlation_ratio() -> None:
    trials = [_trial(i, {"act": "relu"}, 0.5 + 0.001 * i) for i in range(3)]
    trials += [_trial(3 + i, {"act": "gelu"}, 0.9 + 0.001 * i) for i in range(3)]
    (act,) = parameter_importance(trials, ["accuracy"])
    assert act.kind == "categorical"
    assert 0.99 < (act.scores["accuracy"] or 0) <= 1.0


def test_importance_is_none_without_enough_evidence() -> None:
    two = [_trial(i, {"lr": float(i)}, 0.5 + i) for i in range(2)]
    constant = [_trial(i, {"depth": 3}, 0.5 + i) for i in range(5)]
    unique = [_trial(i, {"seed_name": f"s{i}"}, 0.5 + i) for i in range(5)]
    for trials in (two, constant, unique):
        (p,) = parameter_importance(trials, ["accuracy"])
        assert p.scores["accuracy"] is None


def test_importance_leaves_out_trials_that_do_not_set_a_parameter() -> None:
    trials = [_trial(i, {"lr": float(i)}, float(i)) for i in range(4)]
    trials += [_trial(4 + i, {}, 100.0 - i) for i in range(4)]
    (lr,) = parameter_importance(trials, ["accuracy"])
    assert lr.n == 4 and lr.scores["accuracy"] == pytest.approx(1.0)
