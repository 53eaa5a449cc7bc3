"""Compression side by side: one MobileNet configuration on digits, five ways to ship it.

Run: python benchmarks/compression.py [--epochs 15]  ->  benchmarks/results/compression.md
Every variant goes through the same code as a trial: `ImageClassifier.fit` (training, pruning
and fine-tuning, QAT, distillation), then `export_fit` (ONNX export, onnxruntime quantization,
accuracy of the exported model on the validation split), then `measure_latency` (onnxruntime,
1 thread, batch 1, p50 over at least 2 s after warm-up). Same seed everywhere, so the fp32
network is the one that each compressed variant starts from.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from edgetune.devices import MeasureConfig, measure_latency
from edgetune.search.trial_process import export_fit
from edgetune.spec import TrainerSpec
from edgetune.trainers import get_trainer_class

OUT = Path(__file__).parent / "results" / "compression.md"

#: The MobileNet every variant trains: digits upsampled to 16x16, three stages.
CONFIG: dict[str, Any] = {
    "arch": "mobilenet", "width_mult": 1.0, "resolution": 16,
    "s1_blocks": 1, "s1_channels": 24, "s1_kernel": 3, "s1_expand": 6, "s1_se": False,
    "s2_blocks": 2, "s2_channels": 40, "s2_kernel": 3, "s2_expand": 6, "s2_se": False,
    "s3_blocks": 2, "s3_channels": 64, "s3_kernel": 3, "s3_expand": 6, "s3_se": False,
    "lr": 0.005,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "pruned 50% (channels, L1)": {"prune": "channel", "prune_amount": 0.5, "finetune_epochs": 3},
    "int8 static": {"quantization": "int8-static"},
    "pruned 50% + int8 static": {"prune": "channel", "prune_amount": 0.5, "finetune_epochs": 3,
                                 "quantization": "int8-static"},
    "QAT int8": {"quantization": "qat", "finetune_epochs": 2},
    "half width": {"width_mult": 0.5},
    "half width, distilled": {"width_mult": 0.5, "distill_alpha": 0.7,
                              "distill_temperature": 4.0},
}


def run_variant(
    name: str, knobs: dict[str, Any], *, epochs: int, data_dir: Path
) -> dict[str, Any]:
    spec = TrainerSpec(name="image-classifier", dataset="digits", epochs=epochs, seed=0,
                       options={"teacher": "builtin", "threads": 1})
    trainer = get_trainer_class("image-classifier")(spec, data_dir=data_dir,
                                                    cache_dir=data_dir / "cache")
    start = time.perf_counter()
    fit = trainer.fit({**CONFIG, **knobs}, report=lambda epoch, accuracy: None)
    train_s = time.perf_counter() - start
    artifact, metrics, _ = export_fit(fit, data_dir / "artifacts")
    latency = measure_latency(
        artifact.path, runtime=artifact.runtime, input_shape=tuple(fit.example_input.shape),
        config=MeasureConfig(threads=1, warmup=50, min_repeats=300, min_time_s=2.0),
    )
    print(f"{name}: accuracy {metrics['accuracy']:.4f}, {artifact.size_bytes} B, "
          f"p50 {latency.p50_ms:.4f} ms ({train_s:.0f} s training)", flush=True)
    return {"name": name, **metrics, "p50_ms": latency.p50_ms, "train_s": train_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_variant(name, knobs, epochs=args.epochs, data_dir=Path(tmp))
                for name, knobs in VARIANTS.items()]
    base = rows[0]
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Compression on digits: one MobileNet, seven ways to ship it",
        "",
        f"`python benchmarks/compression.py --epochs {args.epochs}` on {cpu}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}. Accuracy is the "
        "exported model's (onnxruntime) on the 20% validation split (360 images); latency is "
        "onnxruntime p50 at batch 1 on 1 thread.",
        "",
        "| variant | accuracy | size_bytes | params | FLOPs | p50 ms | smaller | faster "
        "| accuracy drop |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['accuracy']:.4f} | {int(r['size_bytes'])} | {int(r['params'])} "
            f"| {int(r['flops'])} | {r['p50_ms']:.4f} "
            f"| {base['size_bytes'] / r['size_bytes']:.2f}x | {base['p50_ms'] / r['p50_ms']:.2f}x "
            f"| {100 * (base['accuracy'] - r['accuracy']):+.1f} pt |"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
