"""The measuring process a `Measurer` starts: caps its own memory, imports the engine once,
then measures one request at a time, read as a JSON line on stdin and answered as one on the
protocol's stdout. Run as `python -m edgetune.devices._measuring_child [--memory-bytes N]`."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import sys
from typing import Any, BinaryIO

#: Messages of engines out of address space: onnxruntime and libtorch surface a failed
#: allocation as their own exception type with one of these in the text.
_OUT_OF_MEMORY = ("bad_alloc", "bad allocation", "failed to allocate", "out of memory",
                  "cannot allocate memory", "memoryerror")
_MESSAGE_CHARS = 2000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="edgetune.devices._measuring_child")
    parser.add_argument("--memory-bytes", type=int, default=None)
    args = parser.parse_args(argv)
    protocol = _protocol_stream()
    parent = os.getppid()
    _die_with_parent(parent)
    # Whoever started it decides when it ends; Ctrl-C in a terminal is for them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import resource

    if args.memory_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (args.memory_bytes, args.memory_bytes))
    # A model that crashes the engine must not leave a core file of up to the memory limit
    # (per crash, on the agent's disk).
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _warm_up()
    _send(protocol, {"ready": True, "pid": os.getpid()})
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        _send(protocol, _measure(json.loads(line)))


def _protocol_stream() -> BinaryIO:
    # The engines write to fd 1 at will: keep the protocol on a private copy of it, and send
    # fd 1 itself to stderr.
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol


def _die_with_parent(parent: int) -> None:
    # A killed agent (SIGKILL, OOM) must not leave a model spinning: Linux kills this process
    # when its parent dies.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _warm_up() -> None:
    # The import costs a second or more; paying it here keeps it out of every measurement.
    import importlib.util

    import edgetune.devices.latency  # noqa: F401

    if importlib.util.find_spec("onnxruntime") is not None:
        # A broken install is reported later, by the probe that needs it.
        with contextlib.suppress(Exception):
            import onnxruntime  # noqa: F401


def _measure(request: dict[str, Any]) -> dict[str, Any]:
    from edgetune.devices.latency import MeasureConfig, measure_here
    from edgetune.devices.runtimes import AcceleratorUnavailableError
    from edgetune.errors import MissingDependencyError

    try:
        config = MeasureConfig(**request["config"], timeout_s=None, memory_bytes=None)
        result = measure_here(request["path"], runtime=request["runtime"],
                              input_shape=request["input_shape"], config=config)
        return {"result": result.as_dict()}
    except MemoryError as e:
        return _failure("memory", e)
    except AcceleratorUnavailableError as e:
        return _failure("accelerator", e)
    except MissingDependencyError as e:
        return _failure("missing", e, package=e.package, extra=e.extra)
    except ValueError as e:
        return _failure("value", e)
    except Exception as e:
        causes = [e, e.__cause__] if e.__cause__ is not None else [e]
        if any(isinstance(c, MemoryError) or _says_out_of_memory(c) for c in causes):
            return _failure("memory", e.__cause__ or e)
        return _failure("model", e)


def _says_out_of_memory(e: BaseException) -> bool:
    text = f"{type(e).__name__}: {e}".lower()
    return any(marker in text for marker in _OUT_OF_MEMORY)


def _failure(kind: str, e: BaseException, **more: str) -> dict[str, Any]:
    return {"error": {"kind": kind, "type": type(e).__name__,
                      "message": str(e)[:_MESSAGE_CHARS], **more}}


def _send(protocol: BinaryIO, message: dict[str, Any]) -> None:
    protocol.write(json.dumps(message).encode() + b"\n")
    protocol.flush()


if __name__ == "__main__":
    main()
