"""Latency measurement in a child process with a wall-clock and a memory limit: a model that
loops for ever or allocates without bound costs its measuring process, never the caller.

An uploaded model is data its owner controls, and an inference engine runs whatever its graph
says (an ONNX `Loop` of 2^62 iterations, a `ConstantOfShape` of 8 GiB). Run inside the agent,
such a model holds the agent's only thread in native code, where no signal handler runs, for
ever. The `Measurer` keeps one warm child (`python -m edgetune.devices._measuring_child`,
engine imported once) and hands it one measurement at a time; the child caps its own address
space (RLIMIT_AS) at start, and the parent kills it past the time limit and starts a fresh one
for the next measurement.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from edgetune.errors import MissingDependencyError, TrialFailed

__all__ = [
    "DEFAULT_MEMORY_BYTES",
    "DEFAULT_TIMEOUT_S",
    "MIN_MEMORY_BYTES",
    "MeasurementLimitExceeded",
    "MeasurementStopped",
    "Measurer",
    "shared_measurer",
]

logger = logging.getLogger(__name__)

#: How long one measurement (load, warm-up, timed runs) may take before its process is killed.
DEFAULT_TIMEOUT_S = 120.0
#: The measuring process's address space (RLIMIT_AS): the engine and one edge model fit well
#: within it (onnxruntime with numpy maps ~0.2 GB, torch ~0.7 GB).
DEFAULT_MEMORY_BYTES = 4 << 30
#: Below this the engine itself does not import.
MIN_MEMORY_BYTES = 1 << 28
#: How long a fresh child may take to import its engine and say it is ready.
_START_TIMEOUT_S = 120.0
#: How often the parent looks up from waiting, to honour `stop` and notice a dead child.
_TICK_S = 0.1


class MeasurementLimitExceeded(TrialFailed):
    """The model ran past the measurement's time limit or memory limit, or killed its measuring
    process; the message says which limit. The measuring process was replaced."""


class MeasurementStopped(Exception):
    """The caller asked to stop (`stop` was set) while a measurement was under way; the
    measuring process was killed and nothing was measured."""


class _ChildError(Exception):
    """What failed in the measuring process, as it reported it: `kind` (why: "model",
    "memory", "value", "accelerator", "missing") and the exception's class name."""

    def __init__(self, kind: str, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.kind = kind
        self.type_name = type_name
        self.message = message


class Measurer:
    """One warm measuring child at a time, used for one measurement at a time (a lock keeps
    threads in turn). The child is started at the first `measure`, and again after one was
    killed or died; `close()` ends it.

    `memory_bytes` caps the child's address space; None leaves it uncapped (CUDA drivers
    reserve far more address space than memory, so a child measuring on the GPU is never
    capped: a GPU model's memory is the GPU's).
    """

    def __init__(self, *, memory_bytes: int | None = DEFAULT_MEMORY_BYTES) -> None:
        if memory_bytes is not None and (isinstance(memory_bytes, bool)
                                         or memory_bytes < MIN_MEMORY_BYTES):
            raise ValueError(f"The value of `memory_bytes` is {memory_bytes!r}, but must be >= "
                             f"{MIN_MEMORY_BYTES} (256 MiB) or None.")
        self.memory_bytes = memory_bytes
        self._child: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def measure(
        self,
        artifact_path: Path,
        *,
        runtime: str,
        input_shape: Sequence[int],
        config: Any,
        timeout_s: float,
        stop: threading.Event | None = None,
    ) -> dict[str, Any]:
        """The `LatencyResult.as_dict()` of measuring the artifact in the child with `config`
        (a `MeasureConfig`), within `timeout_s` seconds.

        Raises `MeasurementLimitExceeded` (a `TrialFailed`) when the model ran past
        `timeout_s` or out of memory, or its process died; `TrialFailed` when the runtime could
        not load or run it; `ValueError`, `AcceleratorUnavailableError` or
        `MissingDependencyError` as `measure_latency` does; `MeasurementStopped` when `stop`
        was set meanwhile.
        """
        if not timeout_s > 0:
            raise ValueError(f"The value of `timeout_s` is {timeout_s}, but must be > 0.")
        request = {
            "path": str(artifact_path), "runtime": runtime,
            "input_shape": [int(d) for d in input_shape],
            "config": {"threads": config.threads, "warmup": config.warmup,
                       "min_repeats": config.min_repeats, "min_time_s": config.min_time_s,
                       "max_time_s": config.max_time_s, "device": config.device,
                       "cpus": list(config.cpus) if config.cpus is not None else None},
        }
        with self._lock:
            child = self._started(stop)
            assert child.stdin is not None
            try:
                child.stdin.write(json.dumps(request).encode() + b"\n")
                child.stdin.flush()
            except OSError:
                self._kill()
                raise MeasurementLimitExceeded(
                    "the measuring process died before it took the model") from None
            reply = self._reply(timeout_s, stop, what="the measurement")
        if "result" in reply:
            result: dict[str, Any] = reply["result"]
            return result
        raise _error(reply.get("error") or {}, runtime=runtime, memory_bytes=self.memory_bytes)

    def close(self) -> None:
        """End the measuring child, if one runs."""
        with self._lock:
            self._kill()

    # --- internals -------------------------------------------------------------------------
    def _started(self, stop: threading.Event | None) -> subprocess.Popen[bytes]:
        if self._pid != os.getpid():
            # Inherited through a fork: that child, and its pipes, are the parent's.
            self._child, self._buffer, self._pid = None, b"", os.getpid()
        if self._child is not None and self._child.poll() is None:
            return self._child
        self._kill()
        command = [sys.executable, "-m", "edgetune.devices._measuring_child"]
        if self.memory_bytes is not None:
            command += ["--memory-bytes", str(self.memory_bytes)]
        # stderr stays the caller's: the child's engine logs land in the agent's (or worker's)
        # log. The child starts its own session, so a Ctrl-C meant for the caller's terminal
        # does not reach it mid-measurement; the caller ends it.
        self._child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       start_new_session=True)
        self._buffer = b""
        try:
            self._reply(_START_TIMEOUT_S, stop, what="starting the measuring process")
        except MeasurementLimitExceeded as e:
            raise TrialFailed(f"could not start a measuring process: {e}") from None
        return self._child

    def _reply(self, timeout_s: float, stop: threading.Event | None, *,
               what: str) -> dict[str, Any]:
        child = self._child
        assert child is not None and child.stdout is not None
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                if stop is not None and stop.is_set():
                    self._kill()
                    raise MeasurementStopped(f"stopped during {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    self._kill()
                    raise MeasurementLimitExceeded(
                        f"{what} ran past its time limit of {timeout_s:g} s; the measuring "
                        "process was killed")
                if not selector.select(min(_TICK_S, left)):
                    continue
                chunk = _read_some(child.stdout)
                if not chunk:
                    code = child.wait()
                    self._kill()
                    raise MeasurementLimitExceeded(f"the measuring process died during {what} "
                                                   f"({_exit_reason(code, self.memory_bytes)})")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            reply: dict[str, Any] = json.loads(line)
        except ValueError:
            self._kill()
            raise MeasurementLimitExceeded(
                f"the measuring process answered something unreadable during {what}") from None
        if reply.get("error", {}).get("kind") == "memory":
            # An engine that ran out of its address space may be left half-allocated.
            self._kill()
        return reply

    def _kill(self) -> None:
        child, self._child = self._child, None
        self._buffer = b""
        if child is None:
            return
        if child.poll() is None:
            try:
                # Its own session (start_new_session): the whole group, threads and all.
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                child.kill()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.error("measuring process %d did not die after SIGKILL", child.pid)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _read_some(stream: IO[bytes]) -> bytes:
    return os.read(stream.fileno(), 1 << 16)


def _exit_reason(code: int, memory_bytes: int | None) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else -code
        if -code == signal.SIGKILL:
            return f"killed by {name}, e.g. by the kernel for want of memory"
        return f"killed by {name}"
    if memory_bytes is not None:
        return f"exit code {code}; its memory limit is {memory_bytes:,} bytes"
    return f"exit code {code}"


def _error(error: dict[str, Any], *, runtime: str, memory_bytes: int | None) -> Exception:
    kind = str(error.get("kind", "model"))
    type_name = str(error.get("type", "Exception"))
    message = str(error.get("message", ""))
    cause = _ChildError(kind, type_name, message)
    result: Exception
    if kind == "memory":
        limit = f"{memory_bytes:,} bytes" if memory_bytes is not None else "none set"
        result = MeasurementLimitExceeded(
            f"runtime {runtime!r} ran out of memory measuring the model (the measuring "
            f"process's memory limit: {limit}); {type_name}")
    elif kind == "accelerator":
        from edgetune.devices.runtimes import AcceleratorUnavailableError

        result = AcceleratorUnavailableError(message)
    elif kind == "missing":
        result = MissingDependencyError(str(error.get("package", "?")),
                                        str(error.get("extra", "?")))
    elif kind == "value":
        result = ValueError(message)
    else:
        result = TrialFailed(message)
    result.__cause__ = cause
    return result


_shared: dict[int | None, Measurer] = {}
_shared_lock = threading.Lock()


def shared_measurer(memory_bytes: int | None) -> Measurer:
    """This process's measurer with this memory limit, started once and reused (a warm child
    per limit), and closed at exit."""
    with _shared_lock:
        measurer = _shared.get(memory_bytes)
        if measurer is None:
            measurer = _shared[memory_bytes] = Measurer(memory_bytes=memory_bytes)
            if len(_shared) == 1:
                import atexit

                atexit.register(_close_shared)
        return measurer


def _close_shared() -> None:
    for measurer in list(_shared.values()):
        measurer.close()
