"""Measure the inference latency of an exported model with a runtime, on this machine."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetune.devices.measurer import (
    DEFAULT_MEMORY_BYTES,
    DEFAULT_TIMEOUT_S,
    MIN_MEMORY_BYTES,
    shared_measurer,
)
from edgetune.devices.runtimes import DEVICES, AcceleratorUnavailableError, get_runtime
from edgetune.errors import MissingDependencyError, TrialFailed

__all__ = ["LatencyResult", "MeasureConfig", "measure_here", "measure_latency"]

logger = logging.getLogger(__name__)

#: Fewer timed runs than this give no usable p90, whatever `max_time_s` says.
_MIN_SAMPLES = 3


@dataclass(frozen=True)
class MeasureConfig:
    """How to measure: timed runs repeat until both `min_repeats` and `min_time_s` are
    reached, or `max_time_s` has passed (after at least three runs). `device` is what the model
    computes on: `"cpu"` (the default), or `"cuda"`, the first CUDA GPU, which is used only
    when it is there (`measure_latency` raises `AcceleratorUnavailableError` otherwise, rather
    than report a CPU time as the GPU's). `threads` sets the host threads either way.

    `cpus` pins the measuring thread (and the runtime threads it starts) to those CPU ids for
    the measurement, on Linux; unpinned, the scheduler moves the thread between cores, and on a
    small machine that alone spreads p50 over ±10%. None leaves the affinity as it is.

    `timeout_s` and `memory_bytes` bound the measurement: `measure_latency` runs it in a
    measuring child process whose address space is capped at `memory_bytes` (on the CPU) and
    which is killed past `timeout_s` of wall-clock time (loading, warm-up and timed runs),
    failing the measurement with the reason. Both None measure in the calling process,
    unguarded: only for models this process made itself."""

    threads: int = 1
    warmup: int = 10
    min_repeats: int = 30
    min_time_s: float = 0.2
    max_time_s: float = 10.0
    device: str = "cpu"
    cpus: tuple[int, ...] | None = None
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    memory_bytes: int | None = DEFAULT_MEMORY_BYTES

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"The value of `device` is {self.device!r}, but must be one of "
                             f"{', '.join(map(repr, DEVICES))}.")
        _check_at_least("threads", self.threads, 1)
        _check_at_least("warmup", self.warmup, 0)
        _check_at_least("min_repeats", self.min_repeats, 1)
        _check_at_least("min_time_s", self.min_time_s, 0)
        if not self.max_time_s > 0:
            raise ValueError(f"The value of `max_time_s` is {self.max_time_s}, but must be > 0.")
        if self.cpus is not None and (not self.cpus or any(c < 0 for c in self.cpus)):
            raise ValueError(f"The value of `cpus` is {list(self.cpus)}, but must name CPU ids "
                             ">= 0, or be None.")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"The value of `timeout_s` is {self.timeout_s}, but must be > 0 "
                             "or None.")
        if self.memory_bytes is not None and not self.memory_bytes >= MIN_MEMORY_BYTES:
            raise ValueError(f"The value of `memory_bytes` is {self.memory_bytes}, but must be "
                             f">= {MIN_MEMORY_BYTES} or None.")

    @property
    def guarded(self) -> bool:
        """Whether `measure_latency` measures in a child process with limits."""
        return self.timeout_s is not None or self.memory_bytes is not None


def _check_at_least(field: str, value: float, minimum: float) -> None:
    if not value >= minimum:  # `not >=` so that NaN fails too
        raise ValueError(f"The value of `{field}` is {value}, but must be >= {minimum}.")


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one model with one runtime, in milliseconds per inference of one batch."""

    runtime: str
    threads: int
    batch_size: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    n: int
    #: What the model computed on: "cpu" or "cuda".
    device: str = "cpu"

    def as_dict(self) -> dict[str, float | int | str]:
        """The fields as a JSON-ready dict, e.g. for a trial's user attributes."""
        return dataclasses.asdict(self)


def measure_latency(
    artifact_path: Path,
    *,
    runtime: str,
    input_shape: Sequence[int],
    config: MeasureConfig = MeasureConfig(),
    stop: threading.Event | None = None,
) -> LatencyResult:
    """Time `config.warmup` untimed then repeated timed runs of the artifact with `runtime`,
    in this process's warm measuring child under `config.timeout_s` and
    `config.memory_bytes` (in this process when both are None).

    `input_shape` includes the batch dimension the model was exported with, e.g.
    `(1, 1, 28, 28)`; the input is fixed float32 noise. On `config.device="cuda"` the input
    is copied to the GPU once and every run waits for the GPU, so each time is a whole
    inference. Raises `ValueError` for an unknown runtime, a device the runtime does not
    support or a bad shape, `AcceleratorUnavailableError` (a `ValueError`) when the device is
    "cuda" and no usable GPU is there, and `TrialFailed` when the runtime cannot load or run
    the model, among them `MeasurementLimitExceeded` when the model ran past a limit (the
    measuring child was killed). `MeasurementStopped` when `stop` was set meanwhile.
    """
    shape = _checked_shape(input_shape)
    if not config.guarded:
        return measure_here(artifact_path, runtime=runtime, input_shape=shape, config=config)
    get_runtime(runtime, device=config.device)  # an unknown runtime is the caller's error
    # A GPU's memory is the GPU's; CUDA maps far more address space than it uses.
    memory = config.memory_bytes if config.device == "cpu" else None
    measured = shared_measurer(memory).measure(
        Path(artifact_path), runtime=runtime, input_shape=shape, config=config,
        timeout_s=config.timeout_s if config.timeout_s is not None else 1e9, stop=stop)
    return LatencyResult(**measured)


def measure_here(
    artifact_path: Path | str,
    *,
    runtime: str,
    input_shape: Sequence[int],
    config: MeasureConfig,
) -> LatencyResult:
    """`measure_latency` in the calling process, without limits: what the measuring child
    runs."""
    shape = _checked_shape(input_shape)
    engine = get_runtime(runtime, device=config.device)
    inputs = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    # A CPU set this process may not use is the request's error, not the model's.
    with pinned(config.cpus):
        try:
            engine.load(Path(artifact_path), threads=config.threads)
            for _ in range(config.warmup):
                engine.run_once(inputs)
            samples_ns = _time_runs(engine.run_once, inputs, config)
        except (MissingDependencyError, AcceleratorUnavailableError):
            raise  # the install or the request needs fixing, not the trial
        except Exception as e:
            raise TrialFailed(
                f"runtime {runtime!r} failed on {Path(artifact_path).name}: "
                f"{type(e).__name__}: {e}"
            ) from e
        finally:
            try:
                engine.close()
            except Exception:
                # Do not hide the measurement (or its error) behind a failing cleanup.
                logger.exception("runtime %r failed to close", runtime)

    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50, p90 = np.percentile(ms, [50, 90])
    result = LatencyResult(
        runtime=runtime,
        threads=config.threads,
        batch_size=shape[0],
        p50_ms=float(p50),
        p90_ms=float(p90),
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        n=int(ms.size),
        device=config.device,
    )
    logger.debug("latency of %s: %s", Path(artifact_path).name, result)
    return result


def _checked_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise ValueError(
            f"The value of `input_shape` is {shape}, but must be non-empty with sizes >= 1."
        )
    return shape


@contextlib.contextmanager
def pinned(cpus: Sequence[int] | None) -> Iterator[None]:
    """Run the block with the calling thread on `cpus` (threads it starts inherit them), and
    restore its affinity after; nothing where `cpus` is None or the OS cannot pin (not
    Linux)."""
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    previous = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as e:
        raise ValueError(f"The value of `cpus` is {list(cpus)}, but this process may run on "
                         f"CPUs {sorted(previous)} only ({e.strerror}).") from e
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def _time_runs(
    run_once: Callable[[np.ndarray], None], inputs: np.ndarray, config: MeasureConfig
) -> list[int]:
    min_ns = int(config.min_time_s * 1e9)
    max_ns = int(config.max_time_s * 1e9)
    samples: list[int] = []
    start = time.perf_counter_ns()
    while True:
        t0 = time.perf_counter_ns()
        run_once(inputs)
        t1 = time.perf_counter_ns()
        samples.append(t1 - t0)
        elapsed = t1 - start
        if len(samples) >= config.min_repeats and elapsed >= min_ns:
            return samples
        if elapsed >= max_ns and len(samples) >= _MIN_SAMPLES:
            logger.info(
                "stopped timing after %.1f s with %d of %d runs",
                elapsed / 1e9,
                len(samples),
                config.min_repeats,
            )
            return samples
