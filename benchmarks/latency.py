"""Latency measurement through the device agent, on this machine: (a) repeatability of p50 over
10 probes of one model, (b) the agent round trip's overhead beyond the measurement, (c) the
latency predictor's accuracy on held-out architectures of the mobilenet space, against a
FLOPs-only baseline.

A real `edgetune serve --workers 0` and one `edgetune agent` subprocess do the work. Run on an
idle machine: `python benchmarks/latency.py` writes benchmarks/results/latency.md;
`--quick` is a smoke run with tiny sizes that writes nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from edgetune.api.routes.devices import LEASE_POLL_S
from edgetune.cli import free_port, wait_for_server
from edgetune.client import Client
from edgetune.devices.predictor import LatencyPredictor, graph_features, prediction_error
from edgetune.spaces._builtin import MOBILENET
from edgetune.trainers.export import export_model
from edgetune.trainers.models import build_mobilenet

OUT = Path(__file__).parent / "results" / "latency.md"
DEVICE = "bench-cpu"
RESOLUTION = 32
INPUT_SHAPE = [3, RESOLUTION, RESOLUTION]
#: The model of the repeatability probes: the space's defaults, at full width.
REFERENCE: dict[str, Any] = {
    "arch": "mobilenet", "width_mult": 1.0, "resolution": RESOLUTION,
    "s1_blocks": 1, "s1_channels": 24, "s1_kernel": 3, "s1_expand": 6, "s1_se": False,
    "s2_blocks": 2, "s2_channels": 40, "s2_kernel": 3, "s2_expand": 6, "s2_se": False,
    "s3_blocks": 2, "s3_channels": 64, "s3_kernel": 3, "s3_expand": 6, "s3_se": False,
}
TARGET_CV = 0.05
TARGET_OVERHEAD_MS = 200.0
TARGET_WITHIN_10 = 0.90
N_REPEATS = 10


def sample_configs(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` architectures of the mobilenet space at `RESOLUTION`, drawn uniformly."""
    rng = np.random.default_rng(seed)
    configs = []
    for _ in range(n):
        config: dict[str, Any] = {}
        for param in MOBILENET.params:
            kind = type(param).__name__
            if kind == "FixedParam":
                config[param.name] = param.value  # type: ignore[attr-defined]
            elif kind == "CategoricalParam":
                choices = param.choices  # type: ignore[attr-defined]
                config[param.name] = choices[int(rng.integers(len(choices)))]
            elif kind == "IntParam":
                low, high, step = param.low, param.high, param.step  # type: ignore[attr-defined]
                config[param.name] = int(low + step * rng.integers((high - low) // step + 1))
        config["resolution"] = RESOLUTION
        configs.append(config)
    return configs


def export(config: dict[str, Any], directory: Path) -> Path:
    torch.manual_seed(0)
    model = build_mobilenet(config, in_channels=3, n_classes=10)
    return export_model(model, torch.randn(1, *INPUT_SHAPE), directory).path


def renamed_copy(path: Path, i: int, directory: Path) -> Path:
    """The same graph with another doc string: another sha256, so the probe cache (keyed by the
    artifact) does not answer, while what is measured stays the same."""
    model = onnx.load(str(path))
    model.doc_string = f"repeatability probe {i}"
    out = directory / f"repeat-{i}.onnx"
    onnx.save(model, str(out))
    return out


def start(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes],
                                               str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "edgetune", "serve", "--port", str(port), "--data-dir",
             str(data_dir), "--workers", "0", "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ},
        )
        with Client(url) as client:
            wait_for_server(client, server, timeout=120)
        agent = subprocess.Popen(
            [sys.executable, "-m", "edgetune", "agent", "--server", url, "--name", DEVICE,
             "--threads", "1", "--heartbeat-s", "1", "--poll-s", "5", "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ},
        )
    return server, agent, url


def stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_device(client: Client, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(d.name == DEVICE for d in client.devices().data):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the agent did not register {DEVICE!r} within {timeout} s")


def repeatability(client: Client, model: Path, tmp: Path, settings: dict[str, Any]
                  ) -> tuple[list[float], list[float]]:
    """p50s of `N_REPEATS` probes of one graph, and each probe's round-trip overhead in ms:
    the wall time from the upload to the client seeing it done, less the agent's `measure_s`."""
    p50s, overheads = [], []
    for i in range(N_REPEATS):
        path = renamed_copy(model, i, tmp)
        start_s = time.perf_counter()
        probe = client.probe(path, device=DEVICE, input_shape=INPUT_SHAPE, **settings)
        done = client.wait_probe(probe.id, timeout=300, poll_interval=0.005)
        round_trip_s = time.perf_counter() - start_s
        if done.status != "done" or done.result is None:
            raise RuntimeError(f"probe {probe.id} {done.status}: {done.error}")
        result = done.result.model_dump()
        p50s.append(float(result["p50_ms"]))
        overheads.append(1000 * (round_trip_s - float(result["measure_s"])))
    return p50s, overheads


def measure_all(client: Client, models: Sequence[Path], settings: dict[str, Any]
                ) -> list[float]:
    probes = [client.probe(path, device=DEVICE, input_shape=INPUT_SHAPE, **settings)
              for path in models]
    p50s = []
    for probe in probes:
        done = client.wait_probe(probe.id, timeout=600, poll_interval=0.1)
        if done.status != "done" or done.result is None:
            raise RuntimeError(f"probe {probe.id} {done.status}: {done.error}")
        p50s.append(done.result.p50_ms)
    return p50s


def flops_baseline(train: Sequence[tuple[dict[str, float], float]],
                   test: Sequence[dict[str, float]]) -> np.ndarray:
    """latency = c x FLOPs, c minimising the squared relative error on `train`."""
    f = np.array([features["flops"] for features, _ in train])
    y = np.array([latency for _, latency in train])
    c = float(np.sum(f / y) / np.sum(f**2 / y**2))
    return c * np.array([features["flops"] for features in test])


def accuracy(samples: list[tuple[dict[str, float], float]], seed: int, folds: int
             ) -> list[dict[str, Any]]:
    """Held-out 20% and k-fold error of each predictor kind and of the FLOPs baseline."""
    n = len(samples)
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(2, n // 5)
    test = [samples[i] for i in order[:n_test]]
    train = [samples[i] for i in order[n_test:]]
    measured = np.array([latency for _, latency in test])
    rows = []
    for kind in ("additive", "log-ridge"):
        predictor = LatencyPredictor(kind=kind).fit(train)
        held = prediction_error(measured, predictor.predict_many([f for f, _ in test]))
        rows.append({"model": kind, "held": held,
                     "cv": LatencyPredictor(kind=kind).evaluate(samples, folds=folds,
                                                                seed=seed)})
    held = prediction_error(measured, flops_baseline(train, [f for f, _ in test]))
    predicted = np.zeros(n)
    for fold in np.array_split(order, folds):
        held_out = set(fold.tolist())
        predicted[fold] = flops_baseline([samples[i] for i in range(n) if i not in held_out],
                                         [samples[i][0] for i in fold])
    cv = prediction_error(np.array([latency for _, latency in samples]), predicted)
    rows.append({"model": "FLOPs only (baseline)", "held": held, "cv": cv})
    return rows


def verdict(met: bool) -> str:
    return "met" if met else "missed"


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; writes nothing")
    parser.add_argument("--n", type=int, default=None, help="architectures for (c)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n_archs = args.n or (16 if args.quick else 120)
    settings: dict[str, Any] = (
        {"warmup": 2, "min_repeats": 10, "min_time_s": 0.02} if args.quick
        else {"warmup": 20, "min_repeats": 100, "min_time_s": 1.0}
    )
    folds = 4 if args.quick else 5

    with tempfile.TemporaryDirectory(prefix="edgetune-latency-") as tmp_name:
        tmp = Path(tmp_name)
        models_dir = tmp / "models"
        print(f"exporting the reference model and {n_archs} architectures ...", flush=True)
        reference = export(REFERENCE, models_dir)
        configs = sample_configs(n_archs, args.seed)
        paths = list(dict.fromkeys(export(config, models_dir) for config in configs))
        server, agent, url = start(tmp / "data", tmp / "processes.log")
        try:
            with Client(url) as client:
                wait_device(client)
                print("(a), (b): repeatability and round trip ...", flush=True)
                p50s, overheads = repeatability(client, reference, tmp, settings)
                print(f"(c): measuring {len(paths)} architectures ...", flush=True)
                latencies = measure_all(client, paths, settings)
        except BaseException:
            print((tmp / "processes.log").read_text(errors="replace")[-4000:], file=sys.stderr)
            raise
        finally:
            stop(agent, server)
        samples = [(graph_features(path), latency) for path, latency in zip(paths, latencies,
                                                                               strict=True)]

    cv = statistics.stdev(p50s) / statistics.mean(p50s)
    overhead = statistics.median(overheads)
    rows = accuracy(samples, args.seed, folds)
    best = rows[0]
    lines = [
        "# Latency measurement and prediction" + (" (quick smoke run)" if args.quick else ""),
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}. One `edgetune agent` "
        f"(1 thread, onnxruntime) behind `edgetune serve --workers 0`; measurement settings "
        f"{settings}.",
        "",
        "| figure | value | target | |",
        "|---|---|---|---|",
        f"| (a) CV of p50 over {N_REPEATS} probes of one model | {cv:.2%} "
        f"(p50 {statistics.mean(p50s):.3f} ms) | <= {TARGET_CV:.0%} | {verdict(cv <= TARGET_CV)} |",
        f"| (b) round-trip overhead beyond the measurement (median of {N_REPEATS}) | "
        f"{overhead:.0f} ms | <= {TARGET_OVERHEAD_MS:.0f} ms | "
        f"{verdict(overhead <= TARGET_OVERHEAD_MS)} |",
        f"| (c) predictor ({best['model']}): held-out predictions within ±10% | "
        f"{best['held']['within_10pct']:.0%} | >= {TARGET_WITHIN_10:.0%} | "
        f"{verdict(best['held']['within_10pct'] >= TARGET_WITHIN_10)} |",
        "",
        f"(b) per probe, ms: {', '.join(f'{o:.0f}' for o in overheads)}. The round trip is "
        "upload, queueing, the agent's lease (the server looks at the queue every "
        f"{LEASE_POLL_S:g} s while a lease waits), download, the report, and the client's poll "
        "(every 5 ms here).",
        "",
        f"(c) {len(samples)} distinct architectures of the mobilenet space at "
        f"{RESOLUTION}x{RESOLUTION}, seed {args.seed}, p50 from "
        f"{min(latencies):.3f} to {max(latencies):.3f} ms; held out: a random 20% "
        f"({best['held']['n']}), fitted on the rest; k-fold: {folds} folds over all.",
        "",
        "| model | held-out within ±10% | held-out MAPE | held-out Spearman | "
        f"{folds}-fold within ±10% | {folds}-fold MAPE | {folds}-fold Spearman |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        held, k = row["held"], row["cv"]
        lines.append(
            f"| {row['model']} | {held['within_10pct']:.0%} | {held['mape']:.1f}% | "
            f"{fmt(held['spearman'], '.3f')} | {k['within_10pct']:.0%} | {k['mape']:.1f}% | "
            f"{fmt(k['spearman'], '.3f')} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.quick:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(report)
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
