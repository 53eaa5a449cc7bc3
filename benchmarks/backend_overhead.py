"""What a trial costs beyond its own work, on each backend: trivial trials of the `function`
trainer (one epoch, microseconds of compute), run to completion by the backend in this process.

Run: python benchmarks/backend_overhead.py  ->  benchmarks/results/backend_overhead.md
Per-trial overhead = wall time of the job / trials: asking the sampler, starting the trial (a
forked child on optuna; a Ray actor, reused or not, on ray), reporting and telling the study.
Ray's start-up (`ray.init`, seconds, once per worker) is measured apart.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from edgetune.devices import MeasureConfig
from edgetune.search.backends import Backend, OptunaBackend, RunToEnd
from edgetune.spec import JobSpec
from edgetune.storage import JobRepository, JobStatus, open_database

OUT = Path(__file__).parent / "results" / "backend_overhead.md"




def spec(n_trials: int, parallelism: int, backend: str) -> JobSpec:
    return JobSpec.model_validate({
        "name": f"overhead-{backend}", "seed": 0,
        "trainer": {"name": "function", "dataset": "sphere", "epochs": 1},
        "space": {"name": None, "params": [
            {"type": "float", "name": f"x{i}", "low": 0, "high": 1} for i in range(4)
        ]},
        "objectives": [{"name": "f1"}],
        "algorithm": {"backend": backend, "sampler": "random"},
        "budget": {"n_trials": n_trials, "parallelism": parallelism},
    })


def run(backend: Backend, jobs: JobRepository, job_spec: JobSpec) -> float:
    jobs.create(job_spec)
    job = jobs.claim("bench", lease_s=3600)
    assert job is not None
    start = time.perf_counter()
    outcome = backend.run(job, job_spec, RunToEnd())
    wall = time.perf_counter() - start
    assert outcome.status == JobStatus.SUCCEEDED, outcome.error
    jobs.finish(job.id, "bench", outcome.status, None)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()
    n = args.trials
    rows: list[tuple[str, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        db = open_database(f"sqlite:///{tmp}/edgetune.db")
        jobs = JobRepository(db)
        latency = MeasureConfig(min_repeats=1, min_time_s=0.0)
        optuna_backend = OptunaBackend(storage_url=db.url, artifact_dir=f"{tmp}/artifacts",
                                       latency=latency, poll_interval_s=0.05)
        from edgetune.search.backends.ray import RayBackend

        ray_backends = {
            reuse: RayBackend(storage_url=db.url, artifact_dir=f"{tmp}/artifacts",
                              latency=latency, reuse_actors=reuse)
            for reuse in (True, False)
        }
        start = time.perf_counter()
        ray_backends[True].connect()
        ray_start = time.perf_counter() - start
        run(optuna_backend, jobs, spec(4, 1, "optuna"))  # warm: the fork server starts
        run(ray_backends[True], jobs, spec(2, 1, "ray"))  # warm: Ray's first actors
        for parallelism in (1, 2):
            rows.append(("optuna", parallelism,
                         run(optuna_backend, jobs, spec(n, parallelism, "optuna")) / n))
            for reuse, backend in ray_backends.items():
                name = "ray, actors reused" if reuse else "ray, new actor per trial"
                rows.append((name, parallelism,
                             run(backend, jobs, spec(n, parallelism, "ray")) / n))
            print(rows[-3:], file=sys.stderr)
        db.dispose()

    lines = [
        "# Per-trial overhead of the backends",
        "",
        f"`python benchmarks/backend_overhead.py --trials {n}` on {platform.platform()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}. Trivial trials (the "
        "`function` trainer, one epoch), random sampler, SQLite; seconds of wall time per "
        "trial, job start to end.",
        "",
        "| backend | parallelism | s / trial |",
        "|---|---:|---:|",
        *(f"| {name} | {p} | {s:.3f} |" for name, p, s in rows),
        "",
        f"Starting a local Ray (`ray.init`, once per worker process): {ray_start:.1f} s.",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
