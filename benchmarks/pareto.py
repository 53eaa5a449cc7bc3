"""Pareto kernels beside Optuna's and moocore's: 3-D hypervolume and non-dominated sorting.

Run from the repository root: python benchmarks/pareto.py  ->  benchmarks/results/pareto.md
(moocore is optional: `pip install moocore`; without it its column says so.) Each cell is the
median of several runs on the same seeded data, after one untimed run whose result is checked:
hypervolumes must agree to 1e-9 relative, ranks must be equal. The script exits with status 1,
after writing the report, when they do not.
"""

from __future__ import annotations

import importlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

import numpy as np
import optuna
from _token import use_token
from optuna._hypervolume import compute_hypervolume
from optuna.study._multi_objective import _fast_non_domination_rank

from edgetune.search.pareto import hypervolume, non_dominated_rank


def _optional_moocore() -> ModuleType | None:
    try:
        return importlib.import_module("moocore")
    except ImportError:
        return None


moocore = _optional_moocore()

OUT = Path(__file__).parent / "results" / "pareto.md"
HYPERVOLUME_SIZES = [1_000, 10_000]
RANKING_SIZE = 10_000
REFERENCE = np.full(3, 1.1)
RELATIVE_TOLERANCE = 1e-9
NOT_INSTALLED = "moocore not installed"
# Calls slower than this are repeated fewer times: Optuna's O(n^2) 3-D hypervolume takes
# seconds (and ~2.4 GB) at 10,000 non-dominated points.
SLOW_SECONDS = 1.0

# Set by the sections when two libraries disagree; main() exits non-zero after the report.
disagreements: list[str] = []


def median_ms(fn: Callable[[], object]) -> tuple[float, int]:
    """Median wall time in ms and the number of timed runs (7, or 3 for slow calls)."""
    times: list[float] = []
    repeats = 7
    while len(times) < repeats:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if times[0] > SLOW_SECONDS:
            repeats = 3
    return statistics.median(times) * 1e3, len(times)


def cell(result: tuple[float, int]) -> str:
    ms, runs = result
    return f"{ms:.2f} ({runs})" if ms < 100 else f"{ms:.0f} ({runs})"


def sphere_front(rng: np.random.Generator, n: int) -> np.ndarray:
    """Points on the positive octant of the unit sphere: every one is non-dominated."""
    points = np.abs(rng.normal(size=(n, 3)))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def header() -> list[str]:
    versions = [
        f"Python {platform.python_version()}",
        f"numpy {np.__version__}",
        f"optuna {optuna.__version__}",
        f"moocore {moocore.__version__}" if moocore is not None else NOT_INSTALLED,
    ]
    return [
        "# Pareto kernels: edgetune beside Optuna and moocore",
        "",
        f"Machine: {platform.platform()}, {platform.machine()}, "
        f"os.cpu_count() = {os.cpu_count()}. {', '.join(versions)}.",
        "",
        "Cells: median wall time in ms (number of timed runs), after one untimed run whose "
        "result is checked. Written by `python benchmarks/pareto.py`.",
        "",
    ]


def hypervolume_section() -> list[str]:
    rng = np.random.default_rng(0)
    lines = [
        "## 3-objective hypervolume",
        "",
        "Reference point 1.1 in every objective. `sphere`: points on the positive unit-sphere "
        "octant, all non-dominated. `uniform`: uniform in [0, 1]^3, few non-dominated. "
        "Agreement: largest relative difference from edgetune's value.",
        "",
        "| data | points | edgetune (ms) | Optuna `compute_hypervolume` (ms) | "
        "moocore `hypervolume` (ms) | hypervolume | agreement |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("sphere", "uniform"):
        for n in HYPERVOLUME_SIZES:
            values = sphere_front(rng, n) if kind == "sphere" else rng.random((n, 3))
            ours = hypervolume(values, REFERENCE)
            others = [compute_hypervolume(values, REFERENCE)]
            ours_ms = median_ms(partial(hypervolume, values, REFERENCE))
            optuna_ms = median_ms(partial(compute_hypervolume, values, REFERENCE))
            moocore_cell = NOT_INSTALLED
            if moocore is not None:
                others.append(moocore.hypervolume(values, ref=REFERENCE))
                moocore_cell = cell(median_ms(partial(moocore.hypervolume, values, ref=REFERENCE)))
            difference = max(abs(other - ours) / abs(ours) for other in others)
            if difference > RELATIVE_TOLERANCE:
                disagreements.append(f"hypervolume {kind} n={n}: relative difference {difference}")
            lines.append(
                f"| {kind} | {n} | {cell(ours_ms)} | {cell(optuna_ms)} | {moocore_cell} | "
                f"{ours:.12f} | {difference:.1e} |"
            )
    return [*lines, ""]


def ranking_section() -> list[str]:
    rng = np.random.default_rng(1)
    lines = [
        "## Non-dominated sorting, 3 objectives",
        "",
        f"{RANKING_SIZE} points. `uniform`: uniform in [0, 1]^3. `integer`: integers in "
        "[0, 50), so ties and duplicates occur. All three number fronts from 0; ranks are "
        "checked to be equal for every point.",
        "",
        "| data | points | edgetune `non_dominated_rank` (ms) | "
        "Optuna `_fast_non_domination_rank` (ms) | moocore `pareto_rank` (ms) | fronts | "
        "ranks equal |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for kind in ("uniform", "integer"):
        if kind == "uniform":
            values = rng.random((RANKING_SIZE, 3))
        else:
            values = rng.integers(0, 50, size=(RANKING_SIZE, 3)).astype(np.float64)
        ours = non_dominated_rank(values)
        equal = bool(np.array_equal(ours, _fast_non_domination_rank(values)))
        ours_ms = median_ms(partial(non_dominated_rank, values))
        optuna_ms = median_ms(partial(_fast_non_domination_rank, values))
        moocore_cell = NOT_INSTALLED
        if moocore is not None:
            # moocore documents 0-based ranks with duplicates sharing one, as ours; compare all.
            equal = equal and bool(np.array_equal(ours, moocore.pareto_rank(values)))
            moocore_cell = cell(median_ms(partial(moocore.pareto_rank, values)))
        if not equal:
            disagreements.append(f"ranks {kind}: edgetune, Optuna and moocore differ")
        lines.append(
            f"| {kind} | {RANKING_SIZE} | {cell(ours_ms)} | {cell(optuna_ms)} | {moocore_cell} "
            f"| {int(ours.max()) + 1} | {'yes' if equal else 'NO'} |"
        )
    return [*lines, ""]


ENDPOINT_TRIALS = 10_000


def endpoint_section() -> list[str]:
    """Latency of `GET /jobs/{id}/pareto` on a real server for a job of 10,000 trials."""
    import subprocess
    import tempfile

    import httpx
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from edgetune.cli import free_port
    from edgetune.spec import JobSpec
    from edgetune.storage import JobRepository, open_database

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as data_dir:
        db = open_database(f"sqlite:///{data_dir}/edgetune.db")
        spec = JobSpec.model_validate({
            "name": "bench-10k",
            "objectives": [{"name": "accuracy"}, {"name": "latency_ms"}, {"name": "size_bytes"}],
            "budget": {"n_trials": ENDPOINT_TRIALS},
        })
        job = JobRepository(db).create(spec)
        study = optuna.load_study(study_name=job.study_name, storage=db.url)
        dists = {"lr": FloatDistribution(1e-3, 3e-2, log=True),
                 "kernel_size": CategoricalDistribution([3, 5])}
        trials = []
        for _ in range(ENDPOINT_TRIALS):
            acc, lat, size = float(rng.uniform(0.5, 1)), float(rng.uniform(0.01, 1)), float(
                rng.integers(2_000, 600_000))
            trials.append(optuna.trial.create_trial(
                params={"lr": float(rng.uniform(1e-3, 3e-2)), "kernel_size": 3},
                distributions=dists, values=[acc, lat, size],
                user_attrs={"accuracy": acc, "latency_ms@local": lat, "size_bytes": size},
            ))
        study.add_trials(trials)
        db.dispose()

        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "edgetune", "serve", "--port", str(port), "--data-dir",
             data_dir, "--workers", "0", "--log-level", "warning"],
        )
        base = f"http://127.0.0.1:{port}/api/v1/jobs/{job.id}"
        try:
            headers = {"Authorization": f"Bearer {use_token()}"}
            with httpx.Client(timeout=60, headers=headers) as http:
                for _ in range(600):
                    try:
                        http.get(f"http://127.0.0.1:{port}/api/v1/health")
                        break
                    except httpx.HTTPError:
                        time.sleep(0.1)

                def timed(path: str, **params: object) -> float:
                    start = time.perf_counter()
                    response = http.get(f"{base}{path}", params=params)
                    response.raise_for_status()
                    return (time.perf_counter() - start) * 1e3

                cold = timed("/pareto")
                warm = statistics.median(timed("/pareto") for _ in range(20))
                page = statistics.median(timed("/pareto", include_dominated=True, offset=5000)
                                         for _ in range(20))
                hv_cold = timed("/hypervolume")
                front_size = http.get(f"{base}/pareto", params={"limit": 1}).json()["front_size"]
        finally:
            server.terminate()
            server.wait(timeout=30)
    return [
        "## The Pareto endpoint",
        "",
        f"A real `edgetune serve` process (SQLite) with a job of {ENDPOINT_TRIALS:,} completed "
        f"3-objective trials (uniform random; {front_size} on the front), measured from an "
        "HTTP client on the same machine. Cold: the first request after the server started "
        "(reads every value, finds the front, hypervolume contributions, knee; full ranks "
        "wait for the first `include_dominated` request). Warm: later requests, "
        "served from the per-job cache that the count of completed trials keys.",
        "",
        "| request | ms |",
        "|---|---:|",
        f"| `GET /pareto`, cold | {cold:.0f} |",
        f"| `GET /pareto`, warm (median) | {warm:.1f} |",
        f"| `GET /pareto?include_dominated=true&offset=5000` (100 rows), warm | {page:.1f} |",
        f"| `GET /hypervolume`, first request (ranking cached) | {hv_cold:.0f} |",
        "",
    ]


def main() -> int:
    use_token()
    lines = [*header(), *hypervolume_section(), *ranking_section(), *endpoint_section()]
    if disagreements:
        lines += ["## Disagreements", "", *(f"- {d}" for d in disagreements), ""]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines).rstrip("\n") + "\n")
    print("\n".join(lines))
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
