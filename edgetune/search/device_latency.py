"""A trial's latency on the job's devices: measured in the trial's own process on the built-in
`local` device, by the device's agent through the probe queue on a registered one, or
predicted from the device's probe history (`mode: predicted`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetune.devices import LatencyPredictor, MeasureConfig, graph_features, measure_latency
from edgetune.devices.predictor import MIN_PROBES, PREDICTOR_KINDS
from edgetune.errors import EdgetuneError
from edgetune.spec import LOCAL_DEVICE
from edgetune.storage import (
    Database,
    Device,
    DeviceRepository,
    ProbeRepository,
)
from edgetune.storage.artifacts import find_artifact

#: How long a trial waits for a registered device to measure its model, unless set
#: (`EDGETUNE_PROBE_TIMEOUT_S`).
PROBE_TIMEOUT_S = 600.0
#: The newest done probes a device's latency predictor learns from.
PREDICTOR_HISTORY = 1000

if TYPE_CHECKING:
    from edgetune.trainers.export import Artifact


class LatencyUnavailable(EdgetuneError):
    """A device could not measure the trial's model; the message says why, for the trial."""


@dataclass(frozen=True)
class FittedPredictor:
    """A device's latency predictor with what it was fitted on and its cross-validated error."""

    predictor: LatencyPredictor
    n_probes: int
    n_skipped: int
    error: dict[str, float | int | None]


def fit_device_predictor(
    db: Database, artifact_dir: Path, device: Device, *,
    features: Callable[[str, Path], dict[str, float]] = lambda _sha, path: graph_features(path),
) -> FittedPredictor:
    """Fit `device`'s predictor on its newest done probes whose ONNX artifact is still stored
    (`features(sha256, path)` reads a graph's features: pass a cache), of the kind with the
    better cross-validated error. Raises `LatencyUnavailable` when fewer than `MIN_PROBES`
    are usable."""
    history = ProbeRepository(db).history(device.id, limit=PREDICTOR_HISTORY)
    samples: list[tuple[dict[str, float], float]] = []
    for probe in history:
        path = find_artifact(artifact_dir, probe.artifact_sha256)
        if path is None or path.suffix != ".onnx" or not probe.result:
            continue
        try:
            row = features(probe.artifact_sha256, path)
        except ValueError:
            continue  # an artifact ONNX cannot read tells the predictor nothing
        samples.append(({**row, "threads": float(probe.threads)},
                        float(probe.result["p50_ms"])))
    if len(samples) < MIN_PROBES:
        raise LatencyUnavailable(
            f"device {device.name!r} has {len(samples)} measured probes with a stored ONNX "
            f"artifact, but a latency predictor needs at least {MIN_PROBES}"
        )
    # Each kind of model, judged by its cross-validated error on this device's history: the
    # share within ±10% first, then the mean error. (On the benchmark's mobilenets at 32x32 the
    # additive model wins, 99% against 92% within ±10% over 5 folds.)
    candidates = [LatencyPredictor(kind=kind) for kind in PREDICTOR_KINDS]
    scored = [(p, p.evaluate(samples)) for p in candidates]
    predictor, error = max(scored, key=lambda pe: (float(pe[1]["within_10pct"] or 0.0),
                                                   -float(pe[1]["mape"] or 0.0)))
    return FittedPredictor(predictor.fit(samples), len(samples), len(history) - len(samples),
                           error)


def measure_on_devices(
    devices: Sequence[str], artifact: Artifact, input_shape: Sequence[int], *,
    latency: MeasureConfig, storage_url: str, timeout_s: float,
    predicted: Collection[str] = (), tenant: str,
) -> dict[str, dict[str, Any]]:
    """{device: its measurement (p50_ms, p90_ms, mean_ms, std_ms, n, ... and `source`)}.

    A registered device's probe is queued (or answered from the cache, by identical requests
    before) and waited for up to `timeout_s`; a device whose agents do not measure in time, or
    that fails the probe, raises `LatencyUnavailable` naming the device and the reason. A
    device in `predicted` is not measured: its predictor, fitted on its probe history,
    estimates p50 (`source: predicted`, with the predictor's cross-validated error).
    """
    results: dict[str, dict[str, Any]] = {}
    if LOCAL_DEVICE in devices:
        measured = measure_latency(artifact.path, runtime=artifact.runtime,
                                   input_shape=tuple(input_shape), config=latency)
        results[LOCAL_DEVICE] = {**measured.as_dict(), "source": "local"}
    remote = [d for d in devices if d != LOCAL_DEVICE and d not in predicted]
    if not remote and not predicted:
        return results
    db = Database(storage_url)
    try:
        for name in predicted:
            results[name] = _predict(db, _device(db, name, tenant), artifact)
        probes = ProbeRepository(db)
        queued = {}
        for name in remote:  # queue every probe first: the devices measure at once
            device = _device(db, name, tenant)
            try:
                queued[name] = probes.request(
                    device.id, artifact_sha256=artifact.sha256, runtime=artifact.runtime,
                    input_shape=list(input_shape[1:]), batch_size=int(input_shape[0]),
                    threads=device.threads, warmup=latency.warmup,
                    min_repeats=latency.min_repeats, min_time_s=latency.min_time_s,
                )
            except ValueError as e:  # a runtime the device does not offer
                raise LatencyUnavailable(f"latency on device {name!r}: {e}") from e
        deadline = time.monotonic() + timeout_s  # one timeout for all the devices together
        for name, probe in queued.items():
            done = probes.wait(probe.id, timeout_s=max(0.0, deadline - time.monotonic()))
            if done.status == "failed":
                raise LatencyUnavailable(f"latency on device {name!r}: {done.error}")
            if done.status != "done" or done.result is None:
                raise LatencyUnavailable(
                    f"latency on device {name!r}: no agent of the device measured the model "
                    f"within {timeout_s:g} s (probe {done.id} is {done.status}); is the "
                    "device's agent running?"
                )
            results[name] = {**done.result, "source": "agent", "probe_id": done.id}
    finally:
        db.dispose()
    return results


def _device(db: Database, name: str, tenant: str) -> Device:
    try:
        return DeviceRepository(db).get_by_name(name, tenant=tenant)
    except LookupError as e:
        raise LatencyUnavailable(f"latency on device {name!r}: {e}") from e


def _predict(db: Database, device: Device, artifact: Artifact) -> dict[str, Any]:
    if artifact.format != "onnx":
        raise LatencyUnavailable("predicted latency reads the ONNX graph; this trial exported "
                                 f"{artifact.format} (install the onnx extra)")
    # Artifacts are files in one directory, named by their hash: this trial's is among them.
    fitted = fit_device_predictor(db, artifact.path.parent, device)
    p50 = fitted.predictor.predict({**graph_features(artifact.path),
                                    "threads": float(device.threads)})
    return {
        "p50_ms": p50, "source": "predicted",
        "predictor": {"kind": fitted.predictor.kind, "n_probes": fitted.n_probes,
                      **fitted.error},
    }
