"""One-shot NAS on digits: does a subnet's inherited accuracy rank subnets as training does?

Run: nice -n 10 python benchmarks/supernet_correlation.py [--resolutions 8 16 32]
         [--supernet-epochs 10 20 30] [--subnets 20] [--standalone-epochs 10]
     ->  benchmarks/results/supernet_correlation.md

Side by side, one thread each: supernets of the `mobilenet` space (its `resolution` narrowed
to `--resolutions`) trained with `train_supernet` for each of `--supernet-epochs` (and one
without distillation), and `--subnets` random subnets of that space, each (a) taken from every
supernet with inherited weights, batch norms recalibrated on the training split, and scored
on the validation split, and (b) built by `build_mobilenet` and trained from scratch as a
trial would (Adam at lr 0.005, batch 64, `--standalone-epochs` epochs). The report gives the
Spearman rank correlation of (a) against (b) per supernet, and training times.

Every piece (a supernet's accuracies, a subnet's stand-alone accuracy) is cached as JSON under
`--cache`, so the pieces can run as separate processes and the report is assembled at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from edgetune.spaces import CategoricalParam, Param, ParamValue, resolve_space
from edgetune.trainers.datasets import ImageData, load_image_dataset
from edgetune.trainers.models import build_mobilenet
from edgetune.trainers.supernet import (
    MobileNetSupernet,
    SupernetConfig,
    evaluate,
    recalibrate_bn,
    train_supernet,
)

OUT = Path(__file__).parent / "results" / "supernet_correlation.md"
STANDALONE_LR = 0.005
STANDALONE_BATCH = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--supernet-epochs", type=int, nargs="+", default=[10, 20, 30])
    parser.add_argument("--no-distill-epochs", type=int, nargs="*", default=None,
                        help="also train supernets without distillation (default: the largest "
                             "of --supernet-epochs)")
    parser.add_argument("--subnets", type=int, default=20)
    parser.add_argument("--standalone-epochs", type=int, default=10)
    parser.add_argument("--standalone-seeds", type=int, nargs="+", default=[0, 1],
                        help="train each subnet from scratch once per seed; the rho between "
                             "two seeds is how well stand-alone training ranks itself")
    parser.add_argument("--supernet-batch", type=int, nargs="+", default=[128],
                        help="supernet batch sizes (smaller: more steps per epoch)")
    parser.add_argument("--bn-samples", type=int, nargs="+", default=[2000, 256])
    parser.add_argument("--only", choices=["supernet", "standalone"], default=None,
                        help="compute (and cache) one kind of piece, write no report")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/edgetune-supernet-bench"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)
    data = load_image_dataset("digits", val_fraction=0.2, seed=0)
    space = resolve_space("mobilenet", [
        CategoricalParam(name="resolution", choices=list(args.resolutions))
    ])
    shape = MobileNetSupernet(space, in_channels=1, n_classes=data.n_classes)
    subnets = [shape.sample(random.Random(1000 + i)) for i in range(args.subnets)]
    no_distill = (args.no_distill_epochs if args.no_distill_epochs is not None
                  else [max(args.supernet_epochs)])
    configs = [SupernetConfig(epochs=e, batch_size=b)
               for b in args.supernet_batch for e in args.supernet_epochs] + [
        SupernetConfig(epochs=e, distill=False) for e in no_distill
    ]
    tag = "r" + "-".join(map(str, args.resolutions))
    # Per seed, per subnet (None: not computed). The first seed's runs are always computed;
    # the others, a reference that costs as much again, only with `--only standalone`.
    standalone: list[list[float | None]] = []
    if args.only != "supernet":
        for n, seed in enumerate(args.standalone_seeds):
            compute = n == 0 or args.only == "standalone"
            standalone.append([
                _cached(args.cache / f"{tag}-standalone{args.standalone_epochs}-{i}"
                        f"{f'-s{seed}' if seed else ''}.json",
                        lambda p=params, s=seed: _standalone(p, data, args, s),
                        compute=compute)["accuracy"]
                for i, params in enumerate(subnets)
            ])
    rows = []
    if args.only != "standalone":
        for config in configs:
            batch = "" if config.batch_size == 128 else f"-b{config.batch_size}"
            name = (f"{tag}-supernet-e{config.epochs}-d{int(config.distill)}{batch}"
                    f"-n{args.subnets}.json")
            rows.append((config, _cached(args.cache / name, lambda c=config: _supernet(
                space, data, c, subnets, args.bn_samples))))
    if args.only is None:
        _report(args, space, subnets, standalone, rows)


def _cached(path: Path, run: Any, *, compute: bool = True) -> dict[str, Any]:
    if path.exists():
        return dict(json.loads(path.read_text()))
    if not compute:
        return {"accuracy": None}
    result = run()
    path.write_text(json.dumps(result))
    return dict(result)


def _standalone(
    params: dict[str, ParamValue], data: ImageData, args: Any, seed: int
) -> dict[str, Any]:
    """Train `build_mobilenet(params)` from scratch as a trial would; its val accuracy."""
    torch.manual_seed(seed)
    model = build_mobilenet(params, in_channels=1, n_classes=data.n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=STANDALONE_LR)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(args.standalone_epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for s in range(0, len(order), STANDALONE_BATCH):
            idx = order[s : s + STANDALONE_BATCH]
            if len(idx) < 2:
                continue
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    return {"accuracy": evaluate(model, data.x_val, data.y_val), "seconds": seconds}


def _supernet(
    space: list[Param], data: ImageData, config: SupernetConfig,
    subnets: list[dict[str, ParamValue]], bn_samples: list[int],
) -> dict[str, Any]:
    curve: list[float] = []
    start = time.perf_counter()
    model = train_supernet(space, data, config, threads=1,
                           progress=lambda _epoch, acc: curve.append(acc))
    seconds = time.perf_counter() - start
    inherited: dict[str, list[float]] = {str(n): [] for n in bn_samples}
    inherited["none"] = []  # the supernet's own running statistics, not recalibrated
    eval_seconds = []
    for params in subnets:
        model.eval()
        inherited["none"].append(evaluate(model.extract(params), data.x_val, data.y_val))
        for n in bn_samples:
            t = time.perf_counter()
            net = model.extract(params)
            recalibrate_bn(net, data.x_train, samples=n)
            inherited[str(n)].append(evaluate(net, data.x_val, data.y_val))
            eval_seconds.append(time.perf_counter() - t)
    # The progress callback's evaluations are part of training's wall time; a job pays them.
    return {"seconds": seconds, "curve": curve, "inherited": inherited,
            "eval_seconds": float(np.median(eval_seconds))}


def _report(
    args: Any, space: list[Param], subnets: list[dict[str, ParamValue]],
    by_seed: list[list[float | None]], rows: list[tuple[SupernetConfig, dict[str, Any]]],
) -> None:
    standalone = [float(a) for a in by_seed[0] if a is not None]
    references = []
    for seed, other in zip(args.standalone_seeds[1:], by_seed[1:], strict=True):
        pairs = [(a, b) for a, b in zip(standalone, other, strict=True) if b is not None]
        if len(pairs) >= 3:
            rho = spearmanr(*zip(*pairs, strict=True)).statistic
            references.append(
                f"Stand-alone seed {args.standalone_seeds[0]} vs seed {seed} over the "
                f"{len(pairs)} subnets trained with both: rho {rho:.2f} (how well a from-scratch "
                "trial ranks subnets against itself: the ceiling for any proxy)."
            )
    complete = [seed for seed in by_seed if all(a is not None for a in seed)]
    # The mean over the seeds trained for every subnet: a less noisy stand-alone accuracy.
    averaged = np.mean(np.array(complete, dtype=float), axis=0) if len(complete) > 1 else None
    mean_time = np.mean([json.loads(p.read_text())["seconds"] for p in args.cache.glob(
        f"r{'-'.join(map(str, args.resolutions))}-standalone{args.standalone_epochs}-*.json")])
    lines = [
        "# One-shot NAS: inherited vs stand-alone accuracy (digits)",
        "",
        f"`python benchmarks/supernet_correlation.py --resolutions {_join(args.resolutions)}"
        f" --supernet-epochs {_join(args.supernet_epochs)} --supernet-batch "
        f"{_join(args.supernet_batch)} --subnets {args.subnets} --standalone-epochs "
        f"{args.standalone_epochs} --standalone-seeds {_join(args.standalone_seeds)}`, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 torch "
        "thread per process, under `nice -n 10` on a machine shared with other jobs.",
        "",
        f"Space: `mobilenet` with `resolution` in {args.resolutions}, all other architecture "
        "parameters as built in. Supernet: `train_supernet` (sandwich rule, 2 random subnets per"
        " step, Adam lr 0.01 cosine). Stand-alone: `build_mobilenet` trained from "
        f"scratch, Adam lr {STANDALONE_LR}, batch {STANDALONE_BATCH}, {args.standalone_epochs} "
        f"epochs, on the same split. {len(subnets)} random subnets (seeds 1000..). Spearman's rho "
        "of inherited against stand-alone validation accuracy; BN n: batch norms recalibrated "
        "on n training images (digits has 1437), none: the supernet's running statistics; "
        f"{'' if averaged is None else f'rho vs mean: against the mean of {len(complete)} seeds; '}"
        "times are wall seconds under the shared load, so compare them with care.",
        "",
        f"Stand-alone accuracy over the subnets (seed {args.standalone_seeds[0]}): mean "
        f"{np.mean(standalone):.3f}, min {min(standalone):.3f}, max {max(standalone):.3f}; "
        f"{mean_time:.0f} s of training per subnet on average.",
        "",
        *references,
        "",
        "| supernet | train time (s) | largest val acc (last epoch) | inherited acc mean (min) | "
        + " | ".join(f"rho, BN {k}" for k in rows[0][1]["inherited"])
        + ("" if averaged is None else f" | rho vs mean, BN {args.bn_samples[0]}")
        + " | s per subnet eval |",
        "|---|---|---|---|" + "---|" * (len(rows[0][1]["inherited"]) + (averaged is not None))
        + "---|",
    ]
    for config, result in rows:
        rhos = []
        for accs in result["inherited"].values():
            rho = spearmanr(accs, standalone).statistic
            rhos.append(f"{rho:.2f}")
        best = result["inherited"][str(args.bn_samples[0])]
        if averaged is not None:
            rhos.append(f"{spearmanr(best, averaged).statistic:.2f}")
        lines.append(
            f"| {config.epochs} epochs, batch {config.batch_size}, distill "
            f"{'on' if config.distill else 'off'} | "
            f"{result['seconds']:.0f} | {result['curve'][-1]:.3f} | "
            f"{np.mean(best):.3f} ({min(best):.3f}) | "
            + " | ".join(rhos) + f" | {result['eval_seconds']:.2f} |"
        )
    lines += ["", "Per subnet (stand-alone; inherited with BN "
              f"{args.bn_samples[0]} for each supernet):", "",
              "| subnet | stand-alone | " + " | ".join(
                  f"e{c.epochs} b{c.batch_size} d{int(c.distill)}" for c, _ in rows) + " |",
              "|---|---|" + "---|" * len(rows)]
    for i, params in enumerate(subnets):
        short = ", ".join(f"{k}={v}" for k, v in params.items())
        lines.append(f"| {short} | {standalone[i]:.3f} | " + " | ".join(
            f"{r['inherited'][str(args.bn_samples[0])][i]:.3f}" for _, r in rows) + " |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:20]))


def _join(values: list[int]) -> str:
    return " ".join(map(str, values))


if __name__ == "__main__":
    main()
