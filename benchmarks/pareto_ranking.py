"""Non-dominated sorting: edgetune's kernel beside Optuna's and a brute-force reference.

Run: python benchmarks/pareto_ranking.py  ->  benchmarks/results/pareto_ranking.md
Each cell is the median of 5 runs on the same seeded data; ranks are checked to agree.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from optuna.study._multi_objective import _fast_non_domination_rank

from edgetune.search.pareto import non_dominated_rank

OUT = Path(__file__).parent / "results" / "pareto_ranking.md"
SIZES = [(100, 2), (1000, 2), (5000, 2), (100, 3), (1000, 3), (5000, 3), (2000, 4)]


def brute_force(values: np.ndarray) -> np.ndarray:
    ranks = np.full(len(values), -1)
    remaining = set(range(len(values)))
    rank = 0
    while remaining:
        idx = sorted(remaining)
        sub = values[idx]
        dominated = ((sub[:, None, :] <= sub[None, :, :]).all(-1)
                     & (sub[:, None, :] < sub[None, :, :]).any(-1)).any(0)
        front = [i for i, d in zip(idx, dominated, strict=True) if not d]
        ranks[front] = rank
        remaining -= set(front)
        rank += 1
    return ranks


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for n, m in SIZES:
        # Integer data: ties and duplicates, as objective values like size_bytes produce.
        values = rng.integers(0, 50, size=(n, m)).astype(float)
        ours = non_dominated_rank(values)
        theirs = _fast_non_domination_rank(values)
        assert (ours == theirs).all(), f"ranks differ at n={n}, m={m}"
        brute = None
        if n <= 1000:
            assert (ours == brute_force(values)).all()
            brute = median_seconds(lambda v=values: brute_force(v), repeats=1)
        rows.append((n, m, median_seconds(lambda v=values: non_dominated_rank(v)),
                     median_seconds(lambda v=values: _fast_non_domination_rank(v)), brute))
    lines = [
        "# Non-dominated sorting",
        "",
        f"Machine: {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, numpy {np.__version__}. Median of 5 runs "
        "(brute force: 1 run). Integer-valued data, so ties and duplicates occur.",
        "",
        "| points | objectives | edgetune (ms) | Optuna `_fast_non_domination_rank` (ms) |"
        " brute force (ms) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n, m, ours_s, theirs_s, brute_s in rows:
        brute_cell = f"{brute_s * 1e3:.1f}" if brute_s is not None else "—"
        lines.append(f"| {n} | {m} | {ours_s * 1e3:.2f} | {theirs_s * 1e3:.2f} | {brute_cell} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
