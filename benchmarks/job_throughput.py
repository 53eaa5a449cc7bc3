"""What the service costs per trial: a real server, 1-epoch trials, parallelism 1 and 2.

Run: python benchmarks/job_throughput.py  ->  benchmarks/results/job_throughput.md
Overhead per trial = wall time / trials - mean trial duration (at parallelism 1): the cost of
asking the sampler, starting the trial's process, exporting, measuring and telling.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _token import use_token

from edgetune.cli import free_port, wait_for_server
from edgetune.client import Client

OUT = Path(__file__).parent / "results" / "job_throughput.md"
N_TRIALS = 12


def run(parallelism: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as data_dir:
        port = free_port()
        env = {**os.environ, "EDGETUNE_LATENCY_MIN_TIME_S": "0.1"}
        server = subprocess.Popen(
            [sys.executable, "-m", "edgetune", "serve", "--port", str(port), "--data-dir",
             data_dir, "--workers", "1", "--log-level", "warning"], env=env,
        )
        try:
            with Client(f"http://127.0.0.1:{port}") as client:
                wait_for_server(client, server, timeout=120)
                spec = {
                    "name": f"throughput-p{parallelism}",
                    "trainer": {"epochs": 1},
                    "objectives": [{"name": "accuracy"}, {"name": "latency_ms"},
                                   {"name": "size_bytes"}],
                    "algorithm": {"sampler": "nsga2"},
                    "budget": {"n_trials": N_TRIALS, "parallelism": parallelism},
                    "seed": 0,
                }
                start = time.perf_counter()
                job = client.wait(client.submit(spec).id, poll_interval=0.1, timeout=900)
                wall = time.perf_counter() - start
                assert job.status == "succeeded", job.error
                trials = client.trials(job.id).data
                durations = [t.duration_s for t in trials if t.duration_s is not None]
        finally:
            server.terminate()
            server.wait(timeout=60)
    mean = sum(durations) / len(durations)
    return {"wall_s": wall, "mean_trial_s": mean, "per_trial_s": wall / N_TRIALS}


def main() -> None:
    use_token()
    results = {p: run(p) for p in (1, 2)}
    lines = [
        "# Job throughput",
        "",
        f"{N_TRIALS} trials of the `cnn` space on digits, 1 epoch each, three objectives "
        "(accuracy, latency_ms@local, size_bytes), NSGA-II, one worker, SQLite. "
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}. Wall time is "
        "from submission to `succeeded`, as a client sees it; a trial's duration runs from "
        "ask to tell (train, export to ONNX, measure latency).",
        "",
        "| parallelism | wall (s) | wall per trial (s) | mean trial duration (s) |",
        "|---:|---:|---:|---:|",
    ]
    for p, r in results.items():
        lines.append(f"| {p} | {r['wall_s']:.1f} | {r['per_trial_s']:.2f} | "
                     f"{r['mean_trial_s']:.2f} |")
    one = results[1]
    lines += ["", f"Service overhead per trial at parallelism 1 (wall per trial - mean trial "
              f"duration): {one['per_trial_s'] - one['mean_trial_s']:.2f} s."]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
