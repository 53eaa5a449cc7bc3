"""A trial's latency on the job's devices: measured in the trial's own process on the built-in
`local` device, by the device's agent through the probe queue on a registered one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edgetune.devices import MeasureConfig, measure_latency
from edgetune.errors import EdgetuneError
from edgetune.spec import LOCAL_DEVICE
from edgetune.storage import DEFAULT_TENANT, Database, DeviceRepository, ProbeRepository

if TYPE_CHECKING:
    from edgetune.trainers.export import Artifact


class LatencyUnavailable(EdgetuneError):
    """A device could not measure the trial's model; the message says why, for the trial."""


def measure_on_devices(
    devices: Sequence[str], artifact: Artifact, input_shape: Sequence[int], *,
    latency: MeasureConfig, storage_url: str, timeout_s: float, tenant: str = DEFAULT_TENANT,
) -> dict[str, dict[str, Any]]:
    """{device: its measurement (p50_ms, p90_ms, mean_ms, std_ms, n, ... and `source`)}.

    A registered device's probe is queued (or answered from the cache, by identical requests
    before) and waited for up to `timeout_s`; a device whose agents do not measure in time, or
    that fails the probe, raises `LatencyUnavailable` naming the device and the reason.
    """
    results: dict[str, dict[str, Any]] = {}
    remote = [d for d in devices if d != LOCAL_DEVICE]
    if LOCAL_DEVICE in devices:
        measured = measure_latency(artifact.path, runtime=artifact.runtime,
                                   input_shape=tuple(input_shape), config=latency)
        results[LOCAL_DEVICE] = {**measured.as_dict(), "source": "local"}
    if not remote:
        return results
    db = Database(storage_url)
    try:
        probes = ProbeRepository(db)
        queued = {}
        for name in remote:  # queue every probe first: the devices measure at once
            try:
                device = DeviceRepository(db).get_by_name(name, tenant=tenant)
                queued[name] = probes.request(
                    device.id, artifact_sha256=artifact.sha256, runtime=artifact.runtime,
                    input_shape=list(input_shape[1:]), batch_size=int(input_shape[0]),
                    threads=device.threads, warmup=latency.warmup,
                    min_repeats=latency.min_repeats, min_time_s=latency.min_time_s,
                )
            except (LookupError, ValueError) as e:
                raise LatencyUnavailable(f"latency on device {name!r}: {e}") from e
        for name, probe in queued.items():
            done = probes.wait(probe.id, timeout_s=timeout_s)
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
