"""What runs in a trial's own child process: train, export, measure, and send back metrics.

A trial runs in a child so that a crash (a segfault in a kernel, running out of memory) takes
down that trial only. The parent samples the parameters and tells the study the result; the
child touches the study only to report intermediate values when a pruner needs them.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetune.devices import MeasureConfig
from edgetune.errors import TrialFailed, TrialPruned
from edgetune.search.one_shot import (
    Stage,
    evaluate_subnet,
    finalist_epochs,
    start_from_supernet,
)
from edgetune.search.study import OutcomeState, ResolvedJob, TrialOutcome, run_trial
from edgetune.settings import DataLayout
from edgetune.spaces import ParamValue
from edgetune.spec import LOCAL_DEVICE, ConstraintSpec, JobSpec

if TYPE_CHECKING:
    from edgetune.trainers import FitResult, Report, Trainer
    from edgetune.trainers.export import Artifact

logger = logging.getLogger(__name__)

#: Modules the fork server imports once, so that each trial's child starts warm. torch._dynamo
#: alone takes 1.5 s: torch.optim imports it on first use. Missing ones (onnxruntime without the
#: `onnx` extra) are skipped by the fork server.
PRELOAD = [
    "torch", "torch._dynamo", "torch.onnx", "onnxruntime", "sklearn.datasets",
    "sklearn.model_selection", "optuna", "edgetune.trainers._image", "edgetune.trainers._tabular",
    "edgetune.trainers.export", "edgetune.trainers.compression", "edgetune.trainers.models",
    "edgetune.trainers.supernet",
    "onnxruntime.quantization",
    "edgetune.devices",
]


@dataclass(frozen=True)
class TrialTask:
    """Everything a child needs; plain data, so it crosses the process boundary as is. The job
    comes resolved (spec parsed, space resolved): the child neither validates it again nor
    loads the study, unless a pruner needs the trial's progress."""

    job: ResolvedJob
    storage_url: str
    trial_id: int
    number: int
    params: dict[str, ParamValue]
    layout: DataLayout
    latency: MeasureConfig
    probe_timeout_s: float  # how long a registered device may take to measure
    one_shot: str | None = None  # in a one-shot job, what the trial does (`one_shot.Stage`)


def run_trial_process(task: TrialTask, conn: Any) -> None:
    """The child's entry point: sends one `TrialOutcome` through `conn`, whatever happens."""
    _exit_with_worker(conn)
    conn.send(run_trial(lambda: _run(task)))
    conn.close()


def warm_up() -> None:
    """Does nothing: a worker starts it first, so that the fork server has imported `PRELOAD`
    before the worker's first trial."""


def _exit_with_worker(conn: Any) -> None:
    """End this child as soon as its worker is gone (killed: SIGKILL, the OOM killer), which
    can no longer kill it. Its parent is the fork server, not the worker, and the fork server
    lives on while it has children: without this, an orphaned trial would train to its end,
    beside the trial that runs again in its place. The worker holds the only reading end of
    `conn`, a pipe, and the kernel flags the writing end (POLLERR) once no reader is left."""
    if not hasattr(select, "poll"):  # pragma: no cover - Linux and macOS have poll
        return

    def watch() -> None:
        poller = select.poll()
        poller.register(conn.fileno(), 0)  # POLLERR and POLLHUP are reported unasked
        while True:
            for _fd, events in poller.poll():
                if events & select.POLLNVAL:
                    return  # this process sent its result and closed `conn`
                if events & (select.POLLERR | select.POLLHUP):
                    os._exit(1)

    threading.Thread(target=watch, name="worker-watch", daemon=True).start()


def _run(task: TrialTask) -> TrialOutcome:
    job = task.job
    return train_and_measure(
        job.spec, task.params, layout=task.layout, study_name=job.study_name,
        latency=task.latency, report=_reporter(task), storage_url=task.storage_url,
        probe_timeout_s=task.probe_timeout_s, tenant=job.tenant, one_shot=task.one_shot,
    )


def train_and_measure(
    spec: JobSpec, params: dict[str, ParamValue], *, layout: DataLayout, study_name: str,
    latency: MeasureConfig, report: Report, storage_url: str, probe_timeout_s: float,
    tenant: str, checkpoint_dir: Path | None = None, one_shot: str | None = None,
) -> TrialOutcome:
    """Train one candidate, export it and measure it on the job's devices; any backend's
    trial runs this. Returns the outcome a backend tells the study; raises `TrialPruned` or
    `TrialFailed` (see `run_trial`). In a one-shot job (`search.one_shot`), an evaluation
    cuts the candidate out of the supernet instead of training it, and a finalist trains
    from the supernet's weights unless the job says from scratch."""
    from edgetune.search.device_latency import LatencyUnavailable, measure_on_devices
    from edgetune.trainers import get_trainer_class

    trainer_spec = spec.trainer.model_copy(update={
        "seed": spec.trainer.seed if spec.trainer.seed is not None else (spec.seed or 0),
        "epochs": finalist_epochs(spec) if one_shot == Stage.FINETUNE.value
        else spec.trainer.epochs,
    })
    artifact_dir = layout.artifacts
    trainer = get_trainer_class(trainer_spec.name)(
        trainer_spec, data_dir=layout.root, cache_dir=layout.cache(study_name)
    )
    history: list[float] = []

    def recording(epoch: int, metrics: Mapping[str, float]) -> None:
        if "accuracy" in metrics:
            history.append(float(metrics["accuracy"]))
        try:
            report(epoch, metrics)
        except TrialPruned as e:
            e.args[0].setdefault("user_attrs", {})["val_accuracy_history"] = list(history)
            raise

    limited = [c for c in spec.constraints if c.metric == "latency_ms"]
    if limited:
        _prune_if_too_slow(trainer, params, limited, artifact_dir=artifact_dir, latency=latency,
                           storage_url=storage_url, probe_timeout_s=probe_timeout_s,
                           tenant=tenant)
    if one_shot == Stage.EVAL.value:
        fit = evaluate_subnet(spec, trainer, params, layout)
    else:
        if one_shot == Stage.FINETUNE.value:
            start_from_supernet(spec, trainer, layout)
        fit = trainer.fit(params, report=recording, checkpoint_dir=checkpoint_dir)
    if fit.model is None:  # nothing to export: the trainer measured every metric itself
        return TrialOutcome(OutcomeState.COMPLETE, metrics=dict(fit.metrics))
    artifact, metrics, attrs = export_fit(fit, artifact_dir)
    if history:
        attrs["val_accuracy_history"] = history
    try:
        measured = measure_on_devices(
            spec.devices, artifact, tuple(fit.example_input.shape), latency=latency,
            storage_url=storage_url, timeout_s=probe_timeout_s,
            predicted=spec.predicted_devices, tenant=tenant,
        )
    except LatencyUnavailable as e:
        raise TrialFailed(str(e)) from e
    for device, result in measured.items():
        metrics[f"latency_ms@{device}"] = float(result["p50_ms"])
        attrs[f"latency@{device}"] = result
    return TrialOutcome(OutcomeState.COMPLETE, metrics=metrics, user_attrs=attrs)


def _prune_if_too_slow(
    trainer: Trainer, params: dict[str, ParamValue], constraints: list[ConstraintSpec], *,
    artifact_dir: Path, latency: MeasureConfig, storage_url: str, probe_timeout_s: float,
    tenant: str,
) -> None:
    """Measure the untrained candidate on the constrained devices; raise `TrialPruned` before
    any epoch when it breaks a latency constraint (the trained model has the same shape)."""
    from edgetune.search.constraints import violations
    from edgetune.search.device_latency import LatencyUnavailable, measure_on_devices

    candidate = trainer.untrained(params)
    if candidate is None or candidate.model is None:
        return
    artifact, _, _ = export_fit(candidate, artifact_dir)
    try:
        measured = measure_on_devices(
            list(dict.fromkeys(c.device or LOCAL_DEVICE for c in constraints)), artifact,
            tuple(candidate.example_input.shape), latency=latency, storage_url=storage_url,
            timeout_s=probe_timeout_s, tenant=tenant,
        )
    except LatencyUnavailable as e:
        raise TrialFailed(str(e)) from e
    metrics = {f"latency_ms@{d}": float(r["p50_ms"]) for d, r in measured.items()}
    broken = [c for c, v in zip(constraints, violations(constraints, metrics), strict=True)
              if v > 0]
    if broken:
        raise TrialPruned({
            "metrics": metrics,
            "user_attrs": {
                "pruned_at_epoch": 0,
                "pruned_by": "latency measured before training: "
                             + "; ".join(f"{c.key} = {metrics[c.key]:.4g} ms, limit "
                                         f"{c.op} {c.bound:g}" for c in broken),
                **{f"latency@{d}": r for d, r in measured.items()},
            },
        })


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


def _reporter(task: TrialTask) -> Report:
    """What `report` does in a trial of the optuna backend: nothing without a pruner; with one,
    hand the epoch's progress to it through the study and raise `TrialPruned` when it says
    stop. One objective goes through Optuna's `Trial.report`; several (mo-asha) through the
    vectors `report_values` stores, since Optuna refuses intermediate values for them."""
    if task.job.spec.algorithm.pruner == "none":
        return lambda epoch, metrics: None

    from edgetune.search.schedulers import report_progress

    study = task.job.load_study(task.storage_url, sampler=False)  # params are sampled already
    keys = task.job.progress_keys()

    def report(epoch: int, metrics: Mapping[str, float]) -> None:
        values = [float(metrics[k]) for k in keys if k is not None]
        if report_progress(study, task.trial_id, epoch, values):
            raise TrialPruned({"metrics": dict(metrics), "user_attrs": {"pruned_at_epoch": epoch}})

    return report
