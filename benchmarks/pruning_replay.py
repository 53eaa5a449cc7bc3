"""Early stopping on the digits NAS job, replayed: each trial trained once, in process, and its
learning curve handed epoch by epoch to every pruner setting through the registry's own
pruners (`report_progress`), on in-memory studies.

Run: python benchmarks/pruning_replay.py [--seeds 0 1 2] [--cache DIR]  ->
benchmarks/results/pruning_replay.md. The trials are those of
`search_quality.py --parts pruning` (same specs, seeds and per-trial sampler seeds; training
is seeded, so a trial's curve is the same whichever job trains it); what differs is that a
curve is trained only as deep as some setting asks (one epoch, else all nine) and cached, so
five settings over three seeds cost about what one full run does. Final accuracy is the torch
model's after the last epoch (the service measures the exported ONNX model; the two agree to
the last digit on these trials when nothing is compressed). A quick way to compare rung
policies; `search_quality.py --parts pruning` remains the end-to-end measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from search_quality import nas_spec

from edgetune.search.pareto import hypervolume
from edgetune.search.registry import PRUNERS, SAMPLERS, AlgorithmContext
from edgetune.search.samplers import TrialSeededSampler
from edgetune.search.schedulers import kendall_tau, report_progress, spearman_rho
from edgetune.search.space import suggest
from edgetune.spaces import resolve_space
from edgetune.spec import JobSpec
from edgetune.trainers import get_trainer_class

RESULTS = Path(__file__).parent / "results"
EPOCHS = 9
N_FULL, N_PRUNED = 24, 60
#: setting -> (pruner, objectives, algorithm options)
SETTINGS: dict[str, tuple[str, list[str], dict[str, Any]]] = {
    "none": ("none", ["accuracy", "flops"], {}),
    "sha": ("sha", ["accuracy"], {}),
    "mo-asha": ("mo-asha", ["accuracy", "flops"], {}),
    "sha, fixed rungs (before)": ("sha", ["accuracy"], {"rung_correlation": 0}),
    "mo-asha, fixed rungs (before)": ("mo-asha", ["accuracy", "flops"], {"rung_correlation": 0}),
}


class _Deep(Exception):
    """Raised from `report` once a curve is as deep as asked."""


class Curves:
    """One seed's trials: parameters from the job's sampler, learning curves trained on
    demand and cached in a JSON file."""

    def __init__(self, seed: int, cache: Path) -> None:
        self.seed, self.path = seed, cache / f"seed{seed}.json"
        spec = JobSpec.model_validate(nas_spec("replay", seed, N_PRUNED, EPOCHS,
                                               ["accuracy", "flops"], {"sampler": "random"}))
        self.space = resolve_space(spec.space.name, spec.space.params)
        entry = SAMPLERS["random"]
        ctx = AlgorithmContext(spec, self.space)
        sampler = TrialSeededSampler(
            lambda s: entry.build(replace(ctx, spec=spec.model_copy(update={"seed": s}))),
            seed=spec.seed)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        self.params = []
        for _ in range(N_PRUNED):
            trial = study.ask()
            self.params.append(suggest(trial, self.space))
            study.tell(trial, [0.0, 0.0])
        self.trainer_spec = spec.trainer.model_copy(update={"seed": seed})
        self.rows: dict[int, dict[str, Any]] = {}
        if self.path.exists():
            self.rows = {int(r["number"]): r for r in json.loads(self.path.read_text())}
        self.trained_epochs = 0

    def accuracy(self, number: int, epoch: int) -> float:
        row = self.rows.get(number)
        if row is None or len(row["history"]) < epoch:
            self._train(number, 1 if epoch == 1 else EPOCHS)
            row = self.rows[number]
        return float(row["history"][epoch - 1])

    def flops(self, number: int) -> float:
        if number not in self.rows:
            self._train(number, 1)
        return float(self.rows[number]["flops"])

    def _train(self, number: int, depth: int) -> None:
        history: list[float] = []
        architecture: dict[str, float] = {}

        def report(epoch: int, metrics: Mapping[str, float]) -> None:
            history.append(float(metrics["accuracy"]))
            architecture.update(metrics)
            if epoch >= depth:
                raise _Deep

        trainer = get_trainer_class(self.trainer_spec.name)(
            self.trainer_spec, data_dir=self.path.parent / "data",
            cache_dir=self.path.parent / "data" / "cache")
        with contextlib.suppress(_Deep):
            trainer.fit(self.params[number], report=report)
        self.trained_epochs += len(history)
        self.rows[number] = {"seed": self.seed, "number": number, "history": history,
                             "flops": architecture["flops"], "params": self.params[number]}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(list(self.rows.values())))
        tmp.replace(self.path)  # a run stopped mid-write keeps the last whole cache


def replay(seed: int, cache: Path, settings: Sequence[str], n_pruned: int = N_PRUNED
           ) -> dict[str, list[tuple[str, int, float, float]]]:
    """`settings` on one seed: per trial (state, epochs used, final accuracy, FLOPs)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    curves = Curves(seed, cache)
    out: dict[str, list[tuple[str, int, float, float]]] = {}
    for name in settings:
        pruner, objectives, options = SETTINGS[name]
        n_trials = N_FULL if pruner == "none" else n_pruned
        spec = JobSpec.model_validate(nas_spec(
            f"replay-{pruner}", seed, n_trials, EPOCHS, objectives,
            {"sampler": "random", "pruner": pruner, "options": options}))
        build = PRUNERS[pruner].optuna
        assert build is not None
        study = optuna.create_study(
            directions=["maximize", "minimize"][: len(objectives)],
            pruner=build(AlgorithmContext(spec, curves.space)))
        trials = []
        for number in range(n_trials):
            trial = study.ask()
            flops = curves.flops(number)
            extra = [flops] if len(objectives) == 2 else []
            stopped = None
            if pruner != "none":
                for epoch in range(1, EPOCHS + 1):
                    accuracy = curves.accuracy(number, epoch)
                    if report_progress(study, trial._trial_id, epoch, [accuracy, *extra]):
                        stopped = epoch
                        break
            if stopped is not None:
                study.tell(trial, state=TrialState.PRUNED)
                trials.append(("pruned", stopped, curves.accuracy(number, stopped), flops))
            else:
                final = curves.accuracy(number, EPOCHS)
                study.tell(trial, [final, *extra])
                trials.append(("complete", EPOCHS, final, flops))
        out[name] = trials
    print(f"seed {seed}: trained {curves.trained_epochs} epochs", file=sys.stderr, flush=True)
    return out


def hv_curve(trials: Sequence[tuple[str, int, float, float]], reference: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """Total epochs and hypervolume of (accuracy, FLOPs / reference) after each trial."""
    front: list[list[float]] = []
    spent, hv, current, total = [], [], 0.0, 0
    for state, used, accuracy, flops in trials:
        total += used
        if state == "complete":
            p = [-accuracy, flops]
            if not any(q[0] <= p[0] and q[1] <= p[1] for q in front):
                front = [q for q in front if not (p[0] <= q[0] and p[1] <= q[1])] + [p]
                current = hypervolume(front, [0.0, reference]) / reference
        spent.append(total)
        hv.append(current)
    return np.array(spent), np.array(hv)


def mean_curve(per_seed: Sequence[tuple[np.ndarray, np.ndarray]]
               ) -> tuple[np.ndarray, np.ndarray]:
    grid = np.arange(1, min(int(s[-1]) for s, _ in per_seed) + 1)
    values = [np.where(grid >= s[0], h[np.searchsorted(s, grid, side="right") - 1], 0.0)
              for s, h in per_seed]
    return grid, np.mean(values, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=N_PRUNED,
                        help="trials of the pruned settings (none runs 24)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep trained curves here (default: a temporary directory)")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor(len(args.seeds)) as pool:
            results = dict(zip(args.seeds, pool.map(
                replay, args.seeds, [cache] * len(args.seeds),
                [args.settings] * len(args.seeds), [args.trials] * len(args.seeds),
            ), strict=True))
        rows = {s: json.loads((cache / f"seed{s}.json").read_text()) for s in args.seeds}
    total_s = time.perf_counter() - start
    reference = 1.1 * max(t[3] for r in results.values() for ts in r.values() for t in ts)
    curves = {name: mean_curve([hv_curve(results[s][name], reference) for s in args.seeds])
              for name in args.settings}
    full_epochs, full = curves["none"]
    third = int(full_epochs[-1]) // 3
    none_third, target = float(full[third - 1]), float(full[-1])
    lines = [
        "# Early stopping, replayed", "",
        f"`python benchmarks/pruning_replay.py` on {platform.machine()}, {os.cpu_count()} "
        f"cores, Python {platform.python_version()}: seeds {args.seeds}, {total_s / 60:.0f} "
        "min. The digits NAS job of `search_quality.py --parts pruning` (mobilenet space at "
        "resolution 8, 9 epochs, random sampler): its trials trained once each and replayed "
        f"through each setting's pruner. none runs {N_FULL} trials, the others {args.trials}; "
        "sha optimises accuracy alone (its hypervolume is over the FLOPs every trial has), "
        "mo-asha and none accuracy and FLOPs. Hypervolume of (accuracy, FLOPs) with "
        "reference (0, 1.1 x the largest FLOPs), divided by that FLOPs reference; mean of "
        "the seeds on a common grid of total epochs.", "",
        "| setting | pruned trials | HV @ 1/3 epochs | >= none's? | final HV | within 0.01 "
        "of none's final? | epochs in all |",
        "|---|---:|---:|---|---:|---|---:|",
    ]
    for name, (grid, curve) in curves.items():
        pruned = np.mean([sum(t[0] == "pruned" for t in results[s][name]) for s in args.seeds])
        at_third = float(curve[min(third, len(curve)) - 1])
        final = float(curve[-1])
        versus = ("-" if name == "none" else
                  f"{'yes' if at_third >= none_third else 'no'} ({at_third - none_third:+.4f})")
        close = ("-" if name == "none" else
                 f"{'yes' if final >= target - 0.01 else 'no'} ({final - target:+.4f})")
        lines.append(f"| {name} | {pruned:.1f} | {at_third:.4f} | {versus} | {final:.4f} "
                     f"| {close} | {int(grid[-1])} |")
    lines += ["", "Rank correlation of accuracy after `epoch` epochs with the final accuracy, "
              f"over each seed's first {N_FULL} trials (the no-pruning job's): mean over the "
              "seeds (lowest to highest).", "",
              "| epoch | Spearman | Kendall |", "|---:|---:|---:|"]
    for epoch in range(1, EPOCHS):
        rho, tau = [], []
        for s in args.seeds:
            done = [r for r in rows[s] if r["number"] < N_FULL and len(r["history"]) == EPOCHS]
            early = [r["history"][epoch - 1] for r in done]
            final_acc = [r["history"][-1] for r in done]
            rho.append(spearman_rho(early, final_acc))
            tau.append(kendall_tau(early, final_acc))
        lines.append(f"| {epoch} | {np.mean(rho):.3f} ({min(rho):.3f} to {max(rho):.3f}) "
                     f"| {np.mean(tau):.3f} ({min(tau):.3f} to {max(tau):.3f}) |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pruning_replay.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
