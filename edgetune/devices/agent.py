"""The device agent: registers this machine with a server, heartbeats, and measures the latency
probes queued for it (`edgetune agent`)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import logging
import math
import os
import platform
import re
import secrets
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import httpx

from edgetune.devices.latency import LatencyResult, MeasureConfig
from edgetune.devices.measurer import (
    DEFAULT_MEMORY_BYTES,
    DEFAULT_TIMEOUT_S,
    MeasurementStopped,
    Measurer,
)
from edgetune.devices.runtimes import DEVICES, RUNTIMES, AcceleratorUnavailableError
from edgetune.devices.runtimes._base import torch_sees_cuda

__all__ = ["DEFAULT_MAX_INPUT_ELEMENTS", "Agent", "describe_hardware", "failure_reason"]

logger = logging.getLogger(__name__)

#: Libraries whose versions decide a measurement, reported with the hardware.
_LIBRARIES = ("onnxruntime", "torch", "numpy")
_CHUNK = 1 << 16
#: The most float32 elements of one probe's input (batch included) an agent builds: 128 MiB.
DEFAULT_MAX_INPUT_ELEMENTS = 1 << 25
#: A failure reason is at most this long: it says what failed, never what a file held.
REASON_CHARS = 300
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _Stopping(BaseException):
    """Raised by the signal handler to end a long poll at once (a `BaseException`, so that no
    `except Exception` on the way swallows it)."""


class Agent:
    """One device's agent. `run()` registers (or re-attaches to) the device `name`, starts a
    heartbeat thread, then leases probes and measures them one at a time until `stop()` (or
    SIGTERM/SIGINT after `install_signal_handlers()`).

    `device` is what the models compute on: `"cpu"`, or `"cuda"` (the first GPU, each run
    synchronized with it). An agent asked for `"cuda"` on a machine without a usable GPU
    refuses to start rather than report CPU times as the GPU's; the device's hardware
    description says which one it measures on (`measures_on`).

    `cpus` are the CPU ids each measurement is pinned to (`MeasureConfig.cpus`); by default the
    first `threads` of the CPUs the agent may run on, "none" leaves measurements unpinned. The
    hardware description reports them (`pinned_cpus`).

    Every probe ends reported: done with its statistics, or failed with the reason (a download
    that is too large or whose sha256 is wrong, an input over `max_input_elements`, a model the
    runtime cannot load or run, or one that ran past `measure_timeout_s` or `memory_bytes`).
    Only an agent that dies or is stopped mid-measurement leaves its probe to the lease's
    expiry, where the next lease counts as another attempt.

    Models are measured in a warm child process (`Measurer`) whose address space is capped at
    `memory_bytes` (on the CPU; None: uncapped) and which is killed past `measure_timeout_s`
    and replaced: a model that never ends, or allocates without bound, fails its own probe,
    and the agent stays responsive (SIGTERM ends it within a second or two, also mid-way).
    A failure reason is the exception's class and a short, printable message
    (`failure_reason`), never the raw text of whatever the model made the engine say.
    """

    def __init__(
        self,
        server: str,
        *,
        name: str,
        token: str | None = None,
        runtimes: Sequence[str] = ("onnxruntime",),
        threads: int = 1,
        device: str = "cpu",
        cpus: Sequence[int] | Literal["auto", "none"] = "auto",
        heartbeat_s: float = 5.0,
        poll_s: float = 10.0,
        max_artifact_bytes: int = 1 << 30,
        timeout_s: float = 30.0,
        measure_timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_bytes: int | None = DEFAULT_MEMORY_BYTES,
        max_input_elements: int = DEFAULT_MAX_INPUT_ELEMENTS,
    ) -> None:
        if not runtimes:
            raise ValueError("The value of `runtimes` is empty, but must name a runtime.")
        for runtime in runtimes:
            if runtime not in RUNTIMES:
                raise ValueError(f"The value of `runtime` is {runtime!r}, but must be one of "
                                 f"{', '.join(map(repr, RUNTIMES))}.")
        if threads < 1:
            raise ValueError(f"The value of `threads` is {threads}, but must be >= 1.")
        _check_device(device, runtimes)
        self.cpus = _pinned_cpus(cpus, threads)
        if not heartbeat_s > 0:
            raise ValueError(f"The value of `heartbeat_s` is {heartbeat_s}, but must be > 0.")
        if not 0 <= poll_s <= 30:
            raise ValueError(f"The value of `poll_s` is {poll_s}, but must be in [0, 30].")
        if max_artifact_bytes < 1:
            raise ValueError(f"The value of `max_artifact_bytes` is {max_artifact_bytes}, but "
                             "must be >= 1.")
        if not 0 < measure_timeout_s <= 86_400:
            raise ValueError(f"The value of `measure_timeout_s` is {measure_timeout_s}, but must "
                             "be in (0, 86400].")
        if isinstance(max_input_elements, bool) or max_input_elements < 1:
            raise ValueError(f"The value of `max_input_elements` is {max_input_elements}, but "
                             "must be >= 1.")
        # GPU drivers map far more address space than they use: a cap would stop CUDA itself.
        self._measurer = Measurer(memory_bytes=memory_bytes if device == "cpu" else None)
        self.measure_timeout_s = measure_timeout_s
        self.memory_bytes = self._measurer.memory_bytes
        self.max_input_elements = max_input_elements
        # A probe's thread count is the requester's to choose: one thread per CPU at most, so
        # that a probe asking for 1024 starts no thousand threads here.
        self.max_threads = max(threads, _usable_cpus())
        self.name = name
        self.runtimes = list(runtimes)
        self.threads = threads
        self.device = device
        self.heartbeat_s = heartbeat_s
        self.poll_s = poll_s
        self.max_artifact_bytes = max_artifact_bytes
        #: Who this agent is to the probe queue: leases and reports carry it.
        self.agent_id = f"{socket.gethostname()[:60]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.device_id: str | None = None
        self.stopping = threading.Event()
        #: (probe id, lease owner) of the probe being measured, whose lease the heartbeat renews.
        self._holding: tuple[str, str] | None = None
        # True while the main thread waits on the server in a way only an exception ends.
        self._interruptible = False
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        base_url = server.rstrip("/") + "/api/v1"
        # The long poll holds a request open for up to `poll_s`.
        timeout = httpx.Timeout(timeout_s, read=timeout_s + poll_s)
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        # A client of its own: the heartbeat thread never waits behind a long poll.
        self._heartbeat_http = httpx.Client(base_url=base_url, headers=headers,
                                            timeout=timeout_s)

    # --- lifecycle -------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            logger.info("agent %s: %s received, stopping", self.agent_id,
                        signal.Signals(signum).name)
            self.stop()
            if self._interruptible:
                raise _Stopping

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def stop(self) -> None:
        """Stop now: a measurement under way is abandoned (its child killed, its probe left to
        its lease's expiry)."""
        self.stopping.set()

    def run(self) -> None:
        """Register, then measure probes until stopped."""
        self.register()
        beat = threading.Thread(target=self._heartbeat_loop, name="agent-heartbeat", daemon=True)
        beat.start()
        try:
            while not self.stopping.is_set():
                try:
                    probe = self._lease_interruptibly()
                except httpx.HTTPError as e:
                    logger.warning("agent %s: leasing failed (%s); retrying", self.agent_id, e)
                    self.stopping.wait(min(5.0, self.heartbeat_s))
                    continue
                if probe is not None:
                    self.measure(probe)
        except _Stopping:
            pass  # a signal ended a long poll: stop
        finally:
            self.stopping.set()
            self._measurer.close()
            # The heartbeat thread is a daemon waiting on `stopping`: it wakes at once unless a
            # heartbeat is in flight, and then need not be waited for.
            beat.join(timeout=1.0)
            self._http.close()
            self._heartbeat_http.close()
        logger.info("agent %s: stopped", self.agent_id)

    def register(self) -> str:
        """Register this machine as the device `name` (re-attaching when it exists)."""
        response = self._http.post("/devices", json=self._registration())
        _check(response)
        self.device_id = str(response.json()["id"])
        logger.info("agent %s: %s device %r (%s)", self.agent_id,
                    "registered" if response.status_code == 201 else "re-attached to",
                    self.name, self.device_id)
        return self.device_id

    # --- probes ----------------------------------------------------------------------------
    def lease(self) -> dict[str, Any] | None:
        """The next probe for this device, waiting up to `poll_s` for one; None if none came.

        Each lease is taken under an owner of its own, this agent's id and a secret: only the
        holder of a lease may complete or fail its probe, and the agent's id is public (done
        probes show who measured), the secret is not.
        """
        owner = f"{self.agent_id}/{secrets.token_hex(16)}"
        response = self._http.post(f"/devices/{self.device_id}/probes:lease",
                                   params={"wait_s": self.poll_s}, json={"agent": owner})
        if response.status_code == 204:
            return None
        _check(response)
        probe: dict[str, Any] = response.json()
        probe["lease_owner"] = owner
        return probe

    def _lease_interruptibly(self) -> dict[str, Any] | None:
        # A long poll blocks in a socket read that a signal does not end (PEP 475 retries it):
        # the handler raises `_Stopping` instead, only while here.
        self._interruptible = True
        try:
            if self.stopping.is_set():
                return None
            return self.lease()
        finally:
            self._interruptible = False

    def measure(self, probe: dict[str, Any]) -> None:
        """Download, verify and measure one leased probe, and report the result or failure."""
        probe_id = probe["id"]
        sha256 = probe["artifact_sha256"]
        owner = str(probe.get("lease_owner") or self.agent_id)
        logger.info("agent %s: measuring probe %s (artifact %s)", self.agent_id, probe_id,
                    sha256[:12])
        self._holding = (probe_id, owner)  # the heartbeat renews its lease meanwhile
        try:
            result = self._measure(probe)
        except MeasurementStopped:
            logger.info("agent %s: stopped while measuring probe %s; it goes back to the queue "
                        "when its lease expires", self.agent_id, probe_id)
            return
        except Exception as e:  # whatever it was, the trial waiting on the probe must learn it
            reason = failure_reason(f"could not measure the model {sha256[:12]}", e)
            logger.warning("agent %s: probe %s failed: %s", self.agent_id, probe_id, reason)
            self._report(f"/probes/{probe_id}:fail", {"agent": owner, "reason": reason})
            return
        finally:
            self._holding = None
        self._report(f"/probes/{probe_id}:complete", {"agent": owner, "result": result})
        logger.info("agent %s: measured probe %s: p50 %.3f ms over %d runs", self.agent_id,
                    probe_id, result["p50_ms"], result["n"])

    def _measure(self, probe: dict[str, Any]) -> dict[str, Any]:
        runtime = probe["runtime"]
        if runtime not in self.runtimes:
            raise ValueError(f"this agent offers runtimes {self.runtimes}, not {runtime!r}")
        sha256 = str(probe["artifact_sha256"])
        if not _SHA256.fullmatch(sha256):  # it names a file here and a URL there
            raise ValueError(f"The probe's artifact_sha256 is {sha256[:80]!r}, but must be 64 "
                             "lowercase hex digits.")
        threads = int(probe["threads"])
        if threads > self.max_threads:
            raise ValueError(f"The probe asks for {threads} threads, but this agent runs at "
                             f"most {self.max_threads} (the CPUs it may use).")
        min_time_s = float(probe["min_time_s"])
        config = MeasureConfig(
            threads=threads, warmup=int(probe["warmup"]),
            min_repeats=int(probe["min_repeats"]), min_time_s=min_time_s,
            # A slow model stops at this bound with fewer repeats, rather than holding its
            # lease on and on, and well inside the time limit that kills it.
            max_time_s=min(max(10.0, 2 * min_time_s), self.measure_timeout_s / 2),
            device=self.device, cpus=self.cpus,
        )
        shape = [int(probe["batch_size"]), *(int(d) for d in probe["input_shape"])]
        elements = math.prod(shape)
        if elements > self.max_input_elements:
            raise ValueError(f"The input of shape {shape} has {elements:,} elements, but this "
                             f"agent builds at most {self.max_input_elements:,} "
                             "(max_input_elements).")
        with tempfile.TemporaryDirectory(prefix="edgetune-agent-") as tmp:
            path = self.download(sha256, Path(tmp))
            start = time.perf_counter()
            measured = LatencyResult(**self._measurer.measure(
                path, runtime=runtime, input_shape=shape, config=config,
                timeout_s=self.measure_timeout_s, stop=self.stopping))
            measure_s = time.perf_counter() - start
        # `measure_s` (loading, warm-up and timed runs) lets a client tell the measurement
        # from the queue's own round trip.
        return {**measured.as_dict(), "agent": self.agent_id, "measure_s": measure_s,
                "cpus": list(self.cpus) if self.cpus else None}

    def download(self, sha256: str, directory: Path) -> Path:
        """Fetch the artifact into `directory`, refusing more than `max_artifact_bytes` and any
        content whose sha256 is not `sha256`; nothing unverified is left behind."""
        path = directory / f"{sha256}.model"
        part = directory / f"{sha256}.part"
        digest = hashlib.sha256()
        size = 0
        with self._http.stream("GET", f"/artifacts/{sha256}") as response:
            if not response.is_success:
                response.read()
                raise RuntimeError(f"downloading artifact {sha256[:12]} answered HTTP "
                                   f"{response.status_code}: {response.text[:200]}")
            with part.open("wb") as out:
                for chunk in response.iter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > self.max_artifact_bytes:
                        part.unlink()
                        raise RuntimeError(f"the artifact is over {self.max_artifact_bytes:,} "
                                           "bytes, this agent's cap")
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != sha256:
            part.unlink()
            raise RuntimeError(f"artifact sha256 mismatch: downloaded {digest.hexdigest()}, "
                               f"expected {sha256}")
        part.replace(path)
        return path

    def _report(self, path: str, body: dict[str, Any]) -> None:
        # Reports are idempotent on the server: retry the POST a few times on transport errors.
        for attempt in range(3):
            try:
                response = self._http.post(path, json=body)
            except httpx.HTTPError as e:
                logger.warning("agent %s: %s failed (%s), attempt %d", self.agent_id, path, e,
                               attempt + 1)
                self.stopping.wait(1.0)
                continue
            if not response.is_success:
                logger.error("agent %s: %s answered HTTP %d: %s", self.agent_id, path,
                             response.status_code, response.text[:500])
            return

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(self.heartbeat_s):
            try:
                response = self._heartbeat_http.post(f"/devices/{self.device_id}/heartbeat")
                if response.status_code == 404:
                    logger.warning("agent %s: device %s was deleted; registering again",
                                   self.agent_id, self.device_id)
                    self.device_id = self._register_again()
                elif not response.is_success:
                    logger.warning("agent %s: heartbeat answered HTTP %d", self.agent_id,
                                   response.status_code)
                self._renew_lease()
            except httpx.HTTPError as e:
                logger.warning("agent %s: heartbeat failed: %s", self.agent_id, e)

    def _renew_lease(self) -> None:
        """Keep the lease of the probe being measured: a measurement may outlast one lease
        (`probe_lease_s`), and another agent must not take over a probe still measured here;
        a dead agent renews nothing, so its probe goes back to the queue one lease later."""
        holding = self._holding
        if holding is None:
            return
        probe_id, owner = holding
        response = self._heartbeat_http.post(f"/probes/{probe_id}:renew", json={"agent": owner})
        if not response.is_success and self._holding == holding:
            logger.warning("agent %s: could not renew the lease of probe %s: HTTP %d",
                           self.agent_id, probe_id, response.status_code)

    def _register_again(self) -> str | None:
        response = self._heartbeat_http.post("/devices", json=self._registration())
        _check(response)
        return str(response.json()["id"])

    def _registration(self) -> dict[str, Any]:
        return {"name": self.name, "runtimes": self.runtimes, "threads": self.threads,
                "hardware": {**describe_hardware(), "measures_on": self.device,
                             "pinned_cpus": list(self.cpus) if self.cpus else None}}


def failure_reason(context: str, error: BaseException) -> str:
    """What a failed probe says: `context`, the exception's class and the first line of its
    message with anything unprintable dropped, at most `REASON_CHARS` characters in all.

    An engine's message can quote what the model made it read (a TorchScript module reading
    a file, say): a short first line keeps a reason from carrying a file's contents out.
    """
    lines = str(error).strip().splitlines()
    message = "".join(c for c in (lines[0] if lines else "") if c.isprintable())
    reason = f"{context}: {type(error).__name__}" + (f": {message}" if message else "")
    return reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS - 3] + "..."


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _pinned_cpus(cpus: Sequence[int] | str, threads: int) -> tuple[int, ...] | None:
    if cpus == "none":
        return None
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if cpus == "auto":
        # Where the OS cannot pin, or there are fewer CPUs than threads, leave it be.
        return tuple(allowed[:threads]) if allowed and len(allowed) >= threads else None
    if isinstance(cpus, str) or not cpus:
        raise ValueError(f"The value of `cpus` is {cpus!r}, but must be 'auto', 'none' or CPU "
                         "ids.")
    chosen = tuple(int(c) for c in cpus)
    if allowed is not None and not set(chosen) <= set(allowed):
        raise ValueError(f"The value of `cpus` is {list(chosen)}, but this agent may run on "
                         f"CPUs {allowed} only.")
    return chosen


def _check_device(device: str, runtimes: Sequence[str]) -> None:
    if device not in DEVICES:
        raise ValueError(f"The value of `device` is {device!r}, but must be one of "
                         f"{', '.join(map(repr, DEVICES))}.")
    for runtime in runtimes:
        if device not in RUNTIMES[runtime].devices:
            raise ValueError(f"The value of `device` is {device!r}, but runtime {runtime!r} "
                             f"computes only on {', '.join(map(repr, RUNTIMES[runtime].devices))}.")
    if device == "cuda" and not torch_sees_cuda():
        raise AcceleratorUnavailableError(
            "The value of `device` is 'cuda', but no CUDA GPU is visible here (torch sees none); "
            "run the agent with device 'cpu' or on a machine with a GPU.")


def describe_hardware() -> dict[str, Any]:
    """What this machine is: CPU model, cores, memory, accelerator, library versions."""
    hardware: dict[str, Any] = {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {},
        "accelerator": _accelerator(),
    }
    for library in _LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            hardware["libraries"][library] = importlib.metadata.version(library)
    return hardware


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _accelerator() -> dict[str, Any] | None:
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return {"kind": "cuda", "name": torch.cuda.get_device_name(0),
                "count": torch.cuda.device_count(), "cuda": torch.version.cuda}
    except Exception:  # a broken driver must not stop the agent from measuring on the CPU
        logger.exception("could not query CUDA")
        return None


def _check(response: httpx.Response) -> None:
    if not response.is_success:
        raise RuntimeError(f"{response.request.method} {response.request.url} answered HTTP "
                           f"{response.status_code}: {response.text[:500]}")
