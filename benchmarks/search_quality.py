"""How well each algorithm searches, run through the service's own API (a real `edgetune serve`).

Run: python benchmarks/search_quality.py [--quick] [--parts synthetic,nas,pruning]  ->
benchmarks/results/search_quality_<part>.md and search_quality_*.png beside them. Every job
has a seed and runs at parallelism 1, so a rerun asks the same parameters; two
workers run two jobs at a time.

1. ZDT1 (30 variables) and DTLZ2 (12 variables, 3 objectives) through the `function` trainer:
   hypervolume against trials, mean of the seeds, for random, tpe, motpe, nsga2, gp and rl. The
   fronts' exact hypervolumes are known, so the table also says how close each gets.
2. The digits NAS job (the mobilenet space at resolution 8, 3 epochs, accuracy up and FLOPs
   down): hypervolume against trials for random, tpe, nsga2, gp and rl.
3. Early stopping on the same job at 9 epochs with the random sampler: hypervolume of
   (accuracy, FLOPs) against total training epochs, for no pruning and for sha and hyperband
   (Optuna pruners), asha (Ray Tune) and mo-asha. sha, hyperband and asha are single-objective,
   so their jobs optimise accuracy and the hypervolume is taken over the FLOPs every trial
   records; mo-asha and no pruning optimise both. The pruned runs get 2.5 times the trials,
   so their curves can reach the full-budget run's hypervolume. sha and mo-asha place rungs
   only from an epoch whose accuracy ranks the job's complete trials as their final accuracy
   does (`rung_correlation`); the report gives those rank correlations over the no-pruning
   runs.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _token import use_token
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from edgetune.cli import free_port, wait_for_server
from edgetune.client import Client
from edgetune.schemas import TrialPublic
from edgetune.search.pareto import hypervolume

RESULTS = Path(__file__).parent / "results"

#: problem -> (variables, objectives, reference point, exact hypervolume of the true front).
#: The reference is 1.1 x the worst value each objective can take (ZDT1: f1 <= 1, f2 <= 10;
#: DTLZ2 with 10 distance variables: every f <= 3.5), so every trial counts: with the customary
#: (1.1, 1.1) random search over 30 variables never enters the box and scores 0.
#: ZDT1's front f2 = 1 - sqrt(f1) leaves 1/3 of the box undominated; DTLZ2's, the unit sphere's
#: positive octant, leaves pi/6.
PROBLEMS: dict[str, tuple[int, list[str], list[float], float]] = {
    "zdt1": (30, ["f1", "f2"], [1.1, 11.0], 1.1 * 11.0 - 1 / 3),
    "dtlz2": (12, ["f1", "f2", "f3"], [3.85] * 3, 3.85**3 - math.pi / 6),
}
SYNTHETIC_SAMPLERS = ["random", "tpe", "motpe", "nsga2", "gp", "rl"]
NAS_SAMPLERS = ["random", "tpe", "nsga2", "gp", "rl"]
#: early-stopping setting -> (backend, pruner, objectives the job optimises)
PRUNING: dict[str, tuple[str, str, list[str]]] = {
    "none": ("optuna", "none", ["accuracy", "flops"]),
    "sha": ("optuna", "sha", ["accuracy"]),
    "hyperband": ("optuna", "hyperband", ["accuracy"]),
    "asha (ray)": ("ray", "asha", ["accuracy"]),
    "mo-asha": ("optuna", "mo-asha", ["accuracy", "flops"]),
}
NAS_DIRECTIONS = {"accuracy": -1.0, "flops": 1.0}  # multiply to minimise both


@dataclass
class Run:
    """One job: what it is, then what came back."""

    study: str
    method: str
    seed: int
    spec: dict[str, Any]
    job_id: str = ""
    trials: list[TrialPublic] = field(default_factory=list)
    wall_s: float = 0.0


def synthetic_spec(problem: str, sampler: str, seed: int, n_trials: int) -> dict[str, Any]:
    n_vars, objectives, _, _ = PROBLEMS[problem]
    return {
        "name": f"{problem}-{sampler}-{seed}", "seed": seed,
        "trainer": {"name": "function", "dataset": problem, "epochs": 1},
        "space": {"name": None, "params": [
            {"type": "float", "name": f"x{i}", "low": 0.0, "high": 1.0} for i in range(n_vars)
        ]},
        "objectives": [{"name": o} for o in objectives],
        "algorithm": {"sampler": sampler},
        "budget": {"n_trials": n_trials, "parallelism": 1},
    }


def nas_spec(name: str, seed: int, n_trials: int, epochs: int, objectives: Sequence[str],
             algorithm: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name, "seed": seed,
        "trainer": {"name": "image-classifier", "dataset": "digits", "epochs": epochs,
                    "options": {"threads": 1}},
        "space": {"name": "mobilenet",
                  "params": [{"type": "fixed", "name": "resolution", "value": 8}]},
        "objectives": [{"name": o} for o in objectives],
        "algorithm": algorithm,
        "budget": {"n_trials": n_trials, "parallelism": 1},
    }


@contextmanager
def serve(data_dir: str, workers: int) -> Iterator[Client]:
    port = free_port()
    env = {**os.environ, "EDGETUNE_LATENCY_MIN_TIME_S": "0.05"}
    with open(Path(data_dir) / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "edgetune", "serve", "--port", str(port), "--data-dir",
             data_dir, "--workers", str(workers), "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        with Client(f"http://127.0.0.1:{port}", timeout=120) as client:
            wait_for_server(client, server, timeout=120)
            yield client
    finally:
        server.terminate()
        server.wait(timeout=120)


def run_all(client: Client, runs: list[Run], timeout_s: float) -> None:
    """Submit every job (the workers take them in turn), then wait for each and fetch trials."""
    for run in runs:
        run.job_id = client.submit(run.spec).id
    for i, run in enumerate(runs, 1):
        job = client.wait(run.job_id, timeout=timeout_s, poll_interval=1.0)
        if job.status != "succeeded":
            raise RuntimeError(f"{run.spec['name']}: {job.status}: {job.error}")
        run.trials = all_trials(client, run.job_id)
        if job.started_at and job.finished_at:
            run.wall_s = (job.finished_at - job.started_at).total_seconds()
        print(f"[{i}/{len(runs)}] {run.spec['name']}: {len(run.trials)} trials, "
              f"{run.wall_s:.0f} s", file=sys.stderr, flush=True)


def all_trials(client: Client, job_id: str) -> list[TrialPublic]:
    trials: list[TrialPublic] = []
    while True:
        page = client.trials(job_id, offset=len(trials), limit=100)
        trials += page.data
        if len(trials) >= page.count or not page.data:
            return sorted(trials, key=lambda t: t.number)


def points(trial: TrialPublic, names: Sequence[str], signs: Sequence[float]) -> list[float]:
    return [s * trial.metrics[n] for n, s in zip(names, signs, strict=True)]


def hv_after_each(
    trials: Sequence[TrialPublic], names: Sequence[str], signs: Sequence[float],
    reference: Sequence[float],
) -> np.ndarray:
    """The hypervolume (all objectives minimised) once each trial, in number order, has ended;
    pruned and failed trials add nothing. Incremental: only a new non-dominated point changes it."""
    front: list[list[float]] = []
    curve, current = [], 0.0
    for t in trials:
        if t.state == "complete":
            p = points(t, names, signs)
            if all(a < r for a, r in zip(p, reference, strict=True)) and not any(
                all(q_i <= p_i for q_i, p_i in zip(q, p, strict=True)) for q in front
            ):
                front = [q for q in front
                         if not all(p_i <= q_i for p_i, q_i in zip(p, q, strict=True))] + [p]
                current = hypervolume(front, reference)
        curve.append(current)
    return np.array(curve)


def mean_curve(curves: Sequence[np.ndarray]) -> np.ndarray:
    n = min(len(c) for c in curves)
    return np.mean([c[:n] for c in curves], axis=0)


def trials_to_reach(curve: np.ndarray, target: float) -> int | None:
    reached = np.nonzero(curve >= target - 1e-12)[0]
    return int(reached[0]) + 1 if len(reached) else None


def epochs_used(trial: TrialPublic, epochs: int) -> int:
    if trial.state == "pruned":
        return int(trial.user_attrs.get("pruned_at_epoch", epochs))
    return epochs if trial.state == "complete" else 0


def plot(path: Path, title: str, xlabel: str,
         curves: dict[str, tuple[np.ndarray, np.ndarray]], hline: float | None = None) -> None:
    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.add_subplot()
    for label, (x, y) in curves.items():
        axes.plot(x, y, label=label, linewidth=1.5)
    if hline is not None:
        axes.axhline(hline, color="0.4", linestyle="--", linewidth=1, label="true front")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("hypervolume")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(str(path))


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    use_token()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few trials, one seed: a smoke run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--parts", default="synthetic,nas,pruning")
    parser.add_argument("--nas-samplers", default=",".join(NAS_SAMPLERS),
                        help="the samplers of the NAS part (random and rl at least)")
    args = parser.parse_args()
    nas_samplers = args.nas_samplers.split(",")
    if not {"random", "rl"} <= set(nas_samplers) <= set(NAS_SAMPLERS):
        parser.error(f"--nas-samplers must name random and rl, among {NAS_SAMPLERS}")
    seeds = [0] if args.quick else [0, 1, 2]
    n_synthetic = 20 if args.quick else 200
    # GP's cost per trial grows with the trials (a GP fit over all of them): half the budget.
    n_gp = 10 if args.quick else 100
    n_nas = 6 if args.quick else 30
    n_full, n_pruned = (4, 8) if args.quick else (24, 60)
    parts = set(args.parts.split(","))
    runs: list[Run] = []
    if "synthetic" in parts:
        runs += [Run(problem, sampler, seed, synthetic_spec(
                     problem, sampler, seed, n_gp if sampler == "gp" else n_synthetic))
                 for problem in PROBLEMS for sampler in SYNTHETIC_SAMPLERS for seed in seeds]
    if "nas" in parts:
        runs += [Run("nas", sampler, seed, nas_spec(
            f"nas-{sampler}-{seed}", seed, n_nas, 3, ["accuracy", "flops"],
            {"sampler": sampler})) for sampler in nas_samplers for seed in seeds]
    if "pruning" in parts:
        for method, (backend, pruner, objectives) in PRUNING.items():
            runs += [Run("pruning", method, seed, nas_spec(
                f"pruning-{pruner}-{seed}", seed, n_full if pruner == "none" else n_pruned, 9,
                objectives, {"backend": backend, "sampler": "random", "pruner": pruner},
            )) for seed in seeds]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as data_dir, serve(data_dir, args.workers) as client:
        run_all(client, runs, timeout_s=6 * 3600)
    total_s = time.perf_counter() - start
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = (
        f"`python benchmarks/search_quality.py --parts {{part}}{' --quick' if args.quick else ''}`"
        f" on {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}: {len(runs)} jobs ({args.parts}) through a real "
        f"`edgetune serve --workers {args.workers}` (SQLite), seeds {seeds}, every job at "
        f"parallelism 1; {total_s / 60:.0f} min in all. Hypervolumes are means over the seeds."
    )
    by = {(r.study, r.method): [x for x in runs if (x.study, x.method) == (r.study, r.method)]
          for r in runs}
    sections = {
        "synthetic": lambda: synthetic_section(by, n_synthetic),
        "nas": lambda: nas_section(by, runs, n_nas, nas_samplers),
        "pruning": lambda: pruning_section(by, runs),
    }
    for part in sorted(parts):
        # One file per part, so that a part is rerun without touching the others' figures.
        lines = ["# Search quality: " + part, "", header.format(part=part), *sections[part]()]
        (RESULTS / f"search_quality_{part}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


def synthetic_section(by: dict[tuple[str, str], list[Run]], n: int) -> list[str]:
    checkpoints = [c for c in (10, 25, 50, 67, 100, 200) if c <= n]
    lines = ["", "## ZDT1 and DTLZ2: hypervolume against trials", "",
             "ZDT1 with 30 variables, reference (1.1, 11), true front 11.7667; DTLZ2 with 12 "
             "variables and 3 objectives, reference (3.85, 3.85, 3.85), true front 56.5430 "
             "(1.1 x the worst value of each objective, so that every trial counts). `gap` is "
             "the true front's hypervolume minus the one found. "
             "`to random@N` is the first trial count at which the sampler's mean curve reaches "
             f"random search's mean hypervolume after all {n} trials (target for motpe or the "
             "default, tpe: at most a third of them). gp runs half the trials (its cost per "
             "trial grows with them).", "",
             "| problem | sampler | " + " | ".join(f"HV@{c}" for c in checkpoints)
             + " | gap at its last trial | to random@" + f"{n} | s / job |",
             "|---|---|" + "---:|" * (len(checkpoints) + 3)]
    for problem, (_, objectives, reference, exact) in PROBLEMS.items():
        curves = {
            sampler: mean_curve([hv_after_each(r.trials, objectives, [1.0] * len(objectives),
                                               reference) for r in by[(problem, sampler)]])
            for sampler in SYNTHETIC_SAMPLERS
        }
        target = float(curves["random"][-1])
        for sampler, curve in curves.items():
            wall = np.mean([r.wall_s for r in by[(problem, sampler)]])
            lines.append(
                f"| {problem} | {sampler} | "
                + " | ".join(fmt(float(curve[c - 1]) if c <= len(curve) else None)
                             for c in checkpoints)
                + f" | {exact - curve[-1]:.4f} | {trials_to_reach(curve, target) or '-'}"
                + f" | {wall:.0f} |")
        plot(RESULTS / f"search_quality_{problem}.png",
             f"{problem.upper()}: hypervolume against trials", "trials",
             {s: (np.arange(1, len(c) + 1), c) for s, c in curves.items()}, hline=exact)
    lines += ["", "Curves: `search_quality_zdt1.png`, `search_quality_dtlz2.png`."]
    return lines


def nas_reference(runs: Sequence[Run]) -> list[float]:
    """Accuracy 0 and 1.1 x the largest FLOPs any NAS trial recorded, the same for every run."""
    flops = [t.metrics["flops"] for r in runs if r.study in ("nas", "pruning") for t in r.trials
             if "flops" in t.metrics]
    return [0.0, 1.1 * max(flops)]


def nas_section(by: dict[tuple[str, str], list[Run]], runs: Sequence[Run], n: int,
                samplers: Sequence[str]) -> list[str]:
    reference = nas_reference(runs)
    names, signs = list(NAS_DIRECTIONS), list(NAS_DIRECTIONS.values())
    scale = reference[1]  # report HV as accuracy x share of the FLOPs range
    per_seed = {
        sampler: [hv_after_each(r.trials, names, signs, reference) / scale
                  for r in by[("nas", sampler)]]
        for sampler in samplers
    }
    curves = {sampler: mean_curve(c) for sampler, c in per_seed.items()}
    checkpoints = [c for c in (5, 10, 20, 30, 40) if c <= n]
    lines = ["", "## Digits NAS: hypervolume against trials", "",
             "The mobilenet space at resolution 8 on digits, 3 epochs, objectives accuracy "
             "(maximise) and FLOPs (minimise). Reference: accuracy 0 and 1.1 x the largest FLOPs "
             "of any trial in this benchmark; hypervolume divided by that FLOPs reference, so 1.0 "
             "would be a zero-FLOPs network at 100% accuracy. Target: rl above random at equal "
             "trials."
             + ("" if list(samplers) == NAS_SAMPLERS else
                f" This run has only {', '.join(samplers)} (`--nas-samplers`), so the FLOPs "
                "reference comes from their trials alone."), "",
             "| sampler | " + " | ".join(f"HV@{c}" for c in checkpoints)
             + " | rl - random (trials where rl is ahead) | s / job |",
             "|---|" + "---:|" * (len(checkpoints) + 2)]
    for sampler, curve in curves.items():
        ahead = ""
        if sampler == "rl":
            diff = curves["rl"] - curves["random"][: len(curves["rl"])]
            ahead = f"{float(diff[-1]):+.4f} ({int(np.sum(diff > 0))}/{len(diff)})"
        wall = np.mean([r.wall_s for r in by[("nas", sampler)]])
        lines.append(f"| {sampler} | " + " | ".join(fmt(float(curve[c - 1])) for c in checkpoints)
                     + f" | {ahead} | {wall:.0f} |")
    lines += ["", f"Per seed, HV@{n} (seeds in order "
              f"{', '.join(str(r.seed) for r in by[('nas', 'random')])}):", ""]
    lines += [f"- {sampler}: " + ", ".join(f"{float(c[n - 1]):.4f}" for c in curves_)
              for sampler, curves_ in per_seed.items()]
    plot(RESULTS / "search_quality_nas.png", "Digits NAS: hypervolume against trials", "trials",
         {s: (np.arange(1, len(c) + 1), c) for s, c in curves.items()})
    lines += ["", "Curves: `search_quality_nas.png`."]
    return lines


def pruning_section(by: dict[tuple[str, str], list[Run]], runs: Sequence[Run]) -> list[str]:
    reference = nas_reference(runs)
    names, signs = list(NAS_DIRECTIONS), list(NAS_DIRECTIONS.values())
    scale, epochs = reference[1], 9
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for method in PRUNING:
        per_seed = []
        for r in by[("pruning", method)]:
            spent = np.cumsum([epochs_used(t, epochs) for t in r.trials])
            per_seed.append((spent, hv_after_each(r.trials, names, signs, reference) / scale))
        # Mean over seeds on a common grid of epochs: each seed's curve is a step function.
        grid = np.arange(1, min(s[-1] for s, _ in per_seed) + 1)
        values = [np.where(grid >= spent[0], hv[np.searchsorted(spent, grid, side="right") - 1],
                           0.0) for spent, hv in per_seed]
        curves[method] = (grid, np.mean(values, axis=0))
    full_epochs, full_curve = curves["none"]
    target = float(full_curve[-1])
    lines = ["", "## Early stopping on the digits NAS job: hypervolume against epochs", "",
             f"9 epochs per full trial, random sampler, same seeds; no pruning runs "
             f"{len(by[('pruning', 'none')][0].trials)} trials "
             f"({int(full_epochs[-1])} epochs), the pruned settings "
             f"{len(by[('pruning', 'mo-asha')][0].trials)} each. `epochs to full` is the "
             "total training epochs after which the mean curve first reaches the full-budget "
             "run's final hypervolume (target for mo-asha: at most a third of "
             f"{int(full_epochs[-1])}).", "",
             "| setting | objectives | pruned trials | HV @ 1/3 of full epochs | final HV "
             "| epochs in all | epochs to full | share of full |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    third = int(full_epochs[-1]) // 3
    none_third = float(full_curve[min(third, len(full_curve)) - 1])
    verdicts = []
    for method, (grid, curve) in curves.items():
        rs = by[("pruning", method)]
        pruned = np.mean([sum(t.state == "pruned" for t in r.trials) for r in rs])
        reach = trials_to_reach(curve, target)
        at_third = float(curve[min(third, len(curve)) - 1])
        lines.append(
            f"| {method} | {'+'.join(PRUNING[method][2])} | {pruned:.1f} | {at_third:.4f} "
            f"| {float(curve[-1]):.4f} | {int(grid[-1])} | {reach or '-'} "
            f"| {'-' if reach is None else f'{reach / full_epochs[-1]:.2f}'} |")
        if method != "none":
            verdicts.append(
                f"- {method}: HV at 1/3 epochs >= none's? "
                f"{'yes' if at_third >= none_third else 'no'} ({at_third - none_third:+.4f}); "
                f"within 0.01 of none's final? "
                f"{'yes' if float(curve[-1]) >= target - 0.01 else 'no'} "
                f"({float(curve[-1]) - target:+.4f})")
    lines += ["", f"Against none (HV {none_third:.4f} at {third} epochs, {target:.4f} final):",
              "", *verdicts]
    lines += fidelity_lines(by, runs, epochs)
    plot(RESULTS / "search_quality_pruning.png",
         "Digits NAS, 9 epochs: hypervolume against training epochs", "total training epochs",
         curves)
    lines += ["", "Curves: `search_quality_pruning.png`."]
    return lines


def fidelity_lines(by: dict[tuple[str, str], list[Run]], runs: Sequence[Run], epochs: int
                   ) -> list[str]:
    """How well accuracy after a few epochs ranks the no-pruning runs' complete trials as
    their final (exported, stand-alone) accuracy does, at every epoch before the last, with
    the settings that stopped trials there (their rungs)."""
    from edgetune.search.schedulers import kendall_tau, spearman_rho

    rungs: dict[int, set[str]] = {}
    for r in runs:
        if r.study == "pruning":
            for t in r.trials:
                if t.state == "pruned" and "pruned_at_epoch" in t.user_attrs:
                    rungs.setdefault(int(t.user_attrs["pruned_at_epoch"]), set()).add(r.method)
    steps = list(range(1, epochs))
    rows = []
    for step in steps:
        per_seed = []
        for r in by[("pruning", "none")]:
            done = [t for t in r.trials if t.state == "complete"
                    and len(t.user_attrs.get("val_accuracy_history", [])) >= step]
            early = [float(t.user_attrs["val_accuracy_history"][step - 1]) for t in done]
            final = [float(t.metrics["accuracy"]) for t in done]
            per_seed.append((spearman_rho(early, final), kendall_tau(early, final), len(done)))
        rho = [p[0] for p in per_seed]
        tau = [p[1] for p in per_seed]
        used = ", ".join(sorted(rungs.get(step, ()))) or "-"
        rows.append(f"| {step} | {np.mean(rho):.3f} ({min(rho):.3f} to {max(rho):.3f}) "
                    f"| {np.mean(tau):.3f} ({min(tau):.3f} to {max(tau):.3f}) "
                    f"| {sum(p[2] for p in per_seed)} | {used} |")
    return ["", "### Do early epochs rank trials as the end does?", "",
            "Rank correlation between a trial's validation accuracy after `epoch` epochs and "
            "its final stand-alone accuracy (the exported model's), over the no-pruning runs' "
            "complete trials: mean over the seeds (lowest to highest). `stopped trials there` "
            "names the settings that stopped a trial at that epoch. sha and mo-asha open rungs "
            "only from an epoch where the same Spearman correlation, measured on their own "
            "job's complete trials, reaches `rung_correlation` (0.7) there and at every later "
            "epoch.", "",
            "| epoch | Spearman | Kendall | trials | stopped trials there |",
            "|---:|---:|---:|---:|---|", *rows]


if __name__ == "__main__":
    main()
