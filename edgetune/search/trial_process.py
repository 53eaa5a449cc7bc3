"""What runs in a trial's own child process: train, export, measure, and send back metrics.

A trial runs in a child so that a crash (a segfault in a kernel, running out of memory) takes
down that trial only. The parent samples the parameters and tells the study the result; the
child touches the study only to report intermediate values when a pruner needs them.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetune.devices import MeasureConfig
from edgetune.errors import TrialFailed, TrialPruned
from edgetune.spaces import ParamValue
from edgetune.spec import JobSpec

if TYPE_CHECKING:
    from edgetune.trainers import FitResult
    from edgetune.trainers.export import Artifact

logger = logging.getLogger(__name__)

#: Modules the fork server imports once, so that each trial's child starts warm. torch._dynamo
#: alone takes 1.5 s: torch.optim imports it on first use. Missing ones (onnxruntime without the
#: `onnx` extra) are skipped by the fork server.
PRELOAD = [
    "torch", "torch._dynamo", "torch.onnx", "onnxruntime", "sklearn.datasets",
    "sklearn.model_selection", "optuna", "edgetune.trainers._image", "edgetune.trainers._tabular",
    "edgetune.trainers.export", "edgetune.trainers.compression", "edgetune.trainers.models",
    "onnxruntime.quantization",
    "edgetune.devices",
]


@dataclass(frozen=True)
class TrialTask:
    """Everything a child needs; plain data, so it crosses the process boundary as is."""

    storage_url: str
    study_name: str
    trial_id: int
    number: int
    params: dict[str, ParamValue]
    spec_json: str
    artifact_dir: str
    report_to_pruner: bool
    latency: MeasureConfig


def run_trial_process(task: TrialTask, conn: Any) -> None:
    """The child's entry point: sends one result dict through `conn`, whatever happens."""
    try:
        result = _run(task)
    except TrialPruned as e:
        result = {"state": "pruned", "error": None, **e.args[0]}
    except TrialFailed as e:
        result = {"state": "failed", "error": str(e)}
    except Exception as e:
        result = {
            "state": "failed",
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=20),
        }
    conn.send(result)
    conn.close()


def _run(task: TrialTask) -> dict[str, Any]:
    from edgetune.devices import measure_latency
    from edgetune.trainers import get_trainer_class

    spec = JobSpec.model_validate_json(task.spec_json)
    trainer_spec = spec.trainer.model_copy(
        update={"seed": spec.trainer.seed if spec.trainer.seed is not None else (spec.seed or 0)}
    )
    # The server's data directory (datasets, teacher models): artifacts live in its
    # `artifacts/` (`Settings.artifact_dir`).
    data_dir = Path(task.artifact_dir).parent
    trainer = get_trainer_class(trainer_spec.name)(
        trainer_spec, data_dir=data_dir, cache_dir=data_dir / "cache" / task.study_name
    )
    history: list[float] = []
    report = _reporter(task, spec, history)

    fit = trainer.fit(task.params, report=report)
    artifact, metrics, attrs = export_fit(fit, Path(task.artifact_dir))
    attrs["val_accuracy_history"] = history
    for device in spec.devices:
        # Only the built-in `local` device exists so far; it measures in this process.
        latency = measure_latency(
            artifact.path, runtime=artifact.runtime, input_shape=tuple(fit.example_input.shape),
            config=task.latency,
        )
        metrics[f"latency_ms@{device}"] = latency.p50_ms
        attrs[f"latency@{device}"] = latency.as_dict()
    return {"state": "complete", "metrics": metrics, "user_attrs": attrs}


def export_fit(
    fit: FitResult, artifact_dir: Path
) -> tuple[Artifact, dict[str, float], dict[str, Any]]:
    """Export (and quantize) a trained model; its artifact, metrics and trial attributes.

    The metrics are the trainer's, with `size_bytes` of the exported file, `params`, `flops`
    and, for ONNX, `accuracy` re-measured on the exported model (a quantized model's accuracy
    differs from the torch model's, which is kept as the `torch_accuracy` attribute).
    """
    from edgetune.devices import default_runtime
    from edgetune.trainers.export import count_params, export_model
    from edgetune.trainers.models import count_flops

    metrics: dict[str, float] = dict(fit.metrics)
    runtime = default_runtime()
    if fit.quantization != "fp32" and runtime != "onnxruntime":
        raise TrialFailed(f"quantization {fit.quantization!r} needs onnxruntime (the onnx extra)")
    artifact = export_model(
        fit.model, fit.example_input, artifact_dir,
        format="onnx" if runtime == "onnxruntime" else "torchscript",
        quantization=fit.quantization, calibration=fit.calibration,
    )
    metrics["size_bytes"] = float(artifact.size_bytes)
    metrics["params"] = float(count_params(fit.model))
    metrics["flops"] = float(count_flops(fit.model, fit.example_input))
    attrs: dict[str, Any] = {
        "artifact": {"sha256": artifact.sha256, "format": artifact.format,
                     "size_bytes": artifact.size_bytes},
        "compression": fit.compression,
    }
    if fit.eval_data is not None and artifact.format == "onnx":
        from edgetune.trainers.compression import onnx_accuracy

        attrs["torch_accuracy"] = metrics["accuracy"]
        metrics["accuracy"] = onnx_accuracy(artifact.path, *fit.eval_data)
    return artifact, metrics, attrs


def _reporter(task: TrialTask, spec: JobSpec, history: list[float]) -> Any:
    trial = None
    if task.report_to_pruner:
        import optuna

        from edgetune.search.registry import PRUNERS
        from edgetune.storage import optuna_storage

        study = optuna.load_study(
            study_name=task.study_name,
            storage=optuna_storage(task.storage_url),
            sampler=optuna.samplers.RandomSampler(),  # params are already sampled
            pruner=PRUNERS[spec.algorithm.pruner].build(),
        )
        trial = optuna.trial.Trial(study, task.trial_id)

    def report(epoch: int, accuracy: float) -> None:
        history.append(accuracy)
        if trial is None:
            return
        trial.report(accuracy, step=epoch)
        if trial.should_prune():
            raise TrialPruned({"metrics": {"accuracy": accuracy}, "pruned_at_epoch": epoch,
                               "user_attrs": {"val_accuracy_history": list(history)}})

    return report
