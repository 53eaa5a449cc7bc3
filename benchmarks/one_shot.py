"""One-shot NAS against training every candidate, through a real `edgetune serve`.

Run: python benchmarks/one_shot.py [--quick]  ->  benchmarks/results/one_shot.md and
one_shot.png beside it.

Per seed, on digits, the mobilenet space at resolution 8, objectives accuracy (maximise) and
FLOPs (minimise), one job at a time on a server with one worker, every trial at parallelism 1
with one thread. Cost is CPU-seconds: the sum of the trials' `cpu_s` (the CPU time of each
trial's process, supernet training included), which other load on the machine barely moves:

1. one-shot: a supernet trained once, subnets evaluated with its weights (nsga2 proposes them),
   then the finalists fine-tuned from the supernet's weights (learning rate fixed at 0.005);
2. second device: the same one-shot job with latency on `local` in place of FLOPs. Same space,
   data and settings, so it reuses the first job's supernet and trains none;
3. scratch: nsga2 with every candidate trained from scratch.

Then, in this process, each scratch trial's architecture is cut out of the one-shot job's
supernet and evaluated with inherited weights: the rank correlation (Spearman, Kendall)
between inherited and stand-alone accuracy over those architectures.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _token import use_token
from scipy.stats import kendalltau, spearmanr
from search_quality import RESULTS, all_trials, fmt, hv_after_each, plot, serve

from edgetune.client import Client
from edgetune.schemas import TrialPublic

NAMES, SIGNS = ["accuracy", "flops"], [-1.0, 1.0]  # multiplied: both minimised


@dataclass
class Settings:
    seeds: list[int]
    scratch_trials: int
    epochs: int
    evaluations: int
    finalists: int
    finetune_epochs: int
    supernet_epochs: int
    random_subnets: int


FULL = Settings(seeds=[0, 1, 2], scratch_trials=30, epochs=10, evaluations=40, finalists=4,
                finetune_epochs=3, supernet_epochs=8, random_subnets=1)
QUICK = Settings(seeds=[0], scratch_trials=4, epochs=2, evaluations=6, finalists=2,
                 finetune_epochs=1, supernet_epochs=2, random_subnets=1)


@dataclass
class Job:
    name: str
    trials: list[TrialPublic]
    wall_s: float

    @property
    def cpu_s(self) -> float:
        return float(sum(cpu(t) for t in self.trials))


def cpu(trial: TrialPublic) -> float:
    return float(trial.user_attrs.get("cpu_s", 0.0))


def spec(name: str, seed: int, s: Settings, *, one_shot: bool,
         objectives: list[dict[str, Any]]) -> dict[str, Any]:
    algorithm: dict[str, Any] = {"sampler": "nsga2"}
    n_trials = s.scratch_trials
    params: list[dict[str, Any]] = [{"type": "fixed", "name": "resolution", "value": 8}]
    if one_shot:
        algorithm["one_shot"] = {"supernet_epochs": s.supernet_epochs, "finalists": s.finalists,
                                 "finetune_epochs": s.finetune_epochs,
                                 "random_subnets": s.random_subnets}
        n_trials = s.evaluations + s.finalists
        params.append({"type": "fixed", "name": "lr", "value": 0.005})
    return {
        "name": name, "seed": seed,
        "trainer": {"name": "image-classifier", "dataset": "digits", "epochs": s.epochs,
                    "options": {"threads": 1}},
        "space": {"name": "mobilenet", "params": params},
        "objectives": objectives,
        "algorithm": algorithm,
        "budget": {"n_trials": n_trials, "parallelism": 1},
    }


def run(client: Client, job_spec: dict[str, Any]) -> Job:
    job = client.wait(client.submit(job_spec).id, timeout=6 * 3600, poll_interval=1.0)
    if job.status != "succeeded" or not (job.started_at and job.finished_at):
        raise RuntimeError(f"{job_spec['name']}: {job.status}: {job.error}")
    wall = (job.finished_at - job.started_at).total_seconds()
    print(f"{job_spec['name']}: {wall:.0f} s", file=sys.stderr, flush=True)
    return Job(job_spec["name"], all_trials(client, job.id), wall)


def stage(trials: list[TrialPublic], name: str) -> list[TrialPublic]:
    return [t for t in trials if t.user_attrs.get("one_shot") == name]


def inherited_accuracy(data_dir: Path, job_spec: dict[str, Any],
                       scratch: list[TrialPublic]) -> tuple[list[float], list[float]]:
    """(inherited, stand-alone) accuracy of each complete scratch trial's architecture, cut
    out of the supernet the one-shot job trained (loaded from the server's data directory)."""
    from edgetune.search.one_shot import load_supernet
    from edgetune.settings import DataLayout
    from edgetune.spec import JobSpec
    from edgetune.trainers.datasets import load_image_dataset
    from edgetune.trainers.supernet import evaluate, subnet

    parsed = JobSpec.model_validate(job_spec)
    data = load_image_dataset("digits", val_fraction=0.2, seed=parsed.seed or 0,
                              data_dir=data_dir, options={})
    supernet = load_supernet(parsed, data, DataLayout(data_dir))
    inherited, alone = [], []
    for t in scratch:
        if t.state == "complete":
            params = {**t.params, "resolution": 8, "arch": "mobilenet"}
            inherited.append(evaluate(subnet(supernet, params, data), data.x_val, data.y_val))
            alone.append(float(t.metrics["accuracy"]))
    return inherited, alone


def main() -> None:
    use_token()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, one seed")
    args = parser.parse_args()
    s = QUICK if args.quick else FULL
    flops = [{"name": "accuracy"}, {"name": "flops"}]
    latency = [{"name": "accuracy"}, {"name": "latency_ms", "device": "local"}]
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, serve(tmp, 1) as client:
        for seed in s.seeds:
            first_spec = spec(f"one-shot-{seed}", seed, s, one_shot=True, objectives=flops)
            first = run(client, first_spec)
            second = run(client, spec(f"second-device-{seed}", seed, s, one_shot=True,
                                      objectives=latency))
            scratch = run(client, spec(f"scratch-{seed}", seed, s, one_shot=False,
                                       objectives=flops))
            inherited, alone = inherited_accuracy(Path(tmp), first_spec, scratch.trials)
            rows.append({"seed": seed, "first": first, "second": second, "scratch": scratch,
                         "inherited": inherited, "alone": alone})
    total_min = (time.perf_counter() - start) / 60
    write(rows, s, args.quick, total_min)


def write(rows: list[dict[str, Any]], s: Settings, quick: bool, total_min: float) -> None:
    every = [t for r in rows for j in ("first", "scratch") for t in r[j].trials]
    reference = [0.0, 1.1 * max(t.metrics["flops"] for t in every if "flops" in t.metrics)]
    scale = reference[1]
    table, curves = [], {}
    for r in rows:
        first, second, scratch = r["first"], r["second"], r["scratch"]
        finals = stage(first.trials, "finetune")
        one_hv = float(hv_after_each(finals, NAMES, SIGNS, reference)[-1]) / scale
        evals_hv = float(hv_after_each(stage(first.trials, "eval"), NAMES, SIGNS,
                                       reference)[-1]) / scale
        curve = hv_after_each(scratch.trials, NAMES, SIGNS, reference) / scale
        ends = np.cumsum([cpu(t) for t in scratch.trials])  # parallelism 1: in number order
        at_one = curve[ends <= first.cpu_s]
        scratch_at_one = float(at_one[-1]) if len(at_one) else 0.0
        rho = spearmanr(r["inherited"], r["alone"]).statistic
        tau = kendalltau(r["inherited"], r["alone"]).statistic
        table.append((r["seed"], one_hv, evals_hv, float(curve[-1]), scratch_at_one,
                      first.cpu_s, second.cpu_s, scratch.cpu_s, rho, tau,
                      len(r["inherited"])))
        curves[f"scratch, seed {r['seed']}"] = (ends, curve)
    mean = np.mean([row[1:] for row in table], axis=0)
    lines = [
        "# One-shot NAS against training every candidate", "",
        f"`python benchmarks/one_shot.py{' --quick' if quick else ''}` on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {total_min:.0f} min in "
        "all: a real `edgetune serve --workers 1` (SQLite), one job at a time, parallelism 1, "
        "one thread per trial. CPU s: the sum of the job's trials' CPU time (`cpu_s`, "
        "supernet training included).", "",
        f"Digits, the mobilenet space at resolution 8, accuracy (max) and FLOPs (min), nsga2. "
        f"**scratch**: {s.scratch_trials} candidates each trained {s.epochs} epochs. "
        f"**one-shot**: a supernet trained {s.supernet_epochs} epochs (largest, smallest and "
        f"{s.random_subnets} random subnet(s) a step, in-place distillation), "
        f"{s.evaluations} subnets evaluated with its weights, then {s.finalists} finalists "
        f"trained {s.finetune_epochs} epochs "
        "from its weights (lr fixed at 0.005). **second device**: the same one-shot job with "
        "latency on `local` in place of FLOPs, reusing the first job's supernet. Hypervolume "
        "over (accuracy, FLOPs), reference accuracy 0 and 1.1 x the largest FLOPs of any "
        "trial here, divided by that FLOPs reference. Correlation: each scratch trial's "
        "architecture cut out of the one-shot job's supernet (inherited accuracy) against its "
        "stand-alone accuracy.", "",
        "| seed | one-shot HV (finalists) | its evaluations' HV (inherited) | scratch HV "
        "(all trials) | scratch HV at one-shot's CPU s | one-shot CPU s | second device CPU s | "
        "scratch CPU s | Spearman | Kendall | subnets |",
        "|---:|" + "---:|" * 10,
    ]
    for row in table:
        lines.append(f"| {row[0]} | " + " | ".join(
            [fmt(v) for v in row[1:5]] + [f"{v:.0f}" for v in row[5:8]]
            + [fmt(row[8], 3), fmt(row[9], 3), str(row[10])]) + " |")
    lines.append("| mean | " + " | ".join(
        [fmt(v) for v in mean[:4]] + [f"{v:.0f}" for v in mean[4:7]]
        + [fmt(mean[7], 3), fmt(mean[8], 3), f"{mean[9]:.0f}"]) + " |")
    one_hv, scratch_hv = mean[0], mean[2]
    one_s, second_s, scratch_s = mean[4], mean[5], mean[6]
    lines += [
        "",
        f"- one-shot's hypervolume {'reaches' if one_hv >= scratch_hv else 'misses'} "
        f"scratch's full-budget hypervolume ({fmt(one_hv)} vs {fmt(scratch_hv)}) with "
        f"{one_s / scratch_s:.2f} of its CPU time (target: reach it with at most 1/3).",
        f"- the second device costs {second_s / one_s:.2f} of the first job's time (target: "
        "at most 0.05); it trains no supernet, but evaluates its subnets and trains its "
        "finalists again.",
        f"- Spearman between inherited and stand-alone accuracy: {mean[7]:.3f} over "
        f"{mean[9]:.0f} subnets per seed (target at least 0.7).",
        "", "Curves: `one_shot.png` (scratch hypervolume against CPU seconds, per seed; "
        "one-shot's final hypervolume from the CPU second its job ended).",
    ]
    curves["one-shot finalists (mean), from its end"] = (np.array([one_s, scratch_s]),
                                                         np.array([one_hv, one_hv]))
    plot(RESULTS / "one_shot.png", "Digits NAS: hypervolume against CPU seconds", "CPU seconds",
         {k: (x[np.isfinite(x)], y[np.isfinite(x)]) for k, (x, y) in curves.items()})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "one_shot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
