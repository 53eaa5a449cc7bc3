"""Reads ONNX graphs' features for the latency predictor in a child process of the API: onnx
parses and infers shapes holding the GIL (a 32 MB graph held it for over 2 s at a time), which in
a thread of the API would stall every request. The child is started on first use, asked one
graph at a time, and killed and started again when a graph takes longer than the timeout."""

from __future__ import annotations

import json
import logging
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)


class GraphReader:
    """`reader(path)`: the graph's features (`devices.predictor.graph_features`, with
    `max_bytes`), read in the child; `ValueError` for a graph it cannot read, one over the caps,
    or one that took over `timeout_s`. Safe to share between threads (one graph at a time)."""

    def __init__(self, *, max_bytes: int | None, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"The value of `timeout_s` is {timeout_s}, but must be > 0.")
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._child: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> dict[str, float]:
        with self._lock:
            child = self._child if self._child is not None and self._child.poll() is None \
                else self._start()
            assert child.stdin is not None and child.stdout is not None
            try:
                child.stdin.write(json.dumps(str(path)) + "\n")
                child.stdin.flush()
            except OSError as e:
                self._stop()
                raise ValueError(f"the graph reader stopped: {e}") from e
            answer = self._answer(child.stdout, path)
        if "error" in answer:
            raise ValueError(str(answer["error"]))
        return {str(k): float(v) for k, v in answer["features"].items()}

    def _answer(self, out: IO[str], path: Path) -> dict[str, Any]:
        ready, _, _ = select.select([out], [], [], self.timeout_s)
        line = out.readline() if ready else ""
        if not line:
            self._stop()
            if not ready:
                raise ValueError(f"reading {path.name} took over {self.timeout_s:g} s "
                                 "(EDGETUNE_PREDICTOR_GRAPH_TIMEOUT_S)")
            raise ValueError(f"the graph reader died reading {path.name}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _start(self) -> subprocess.Popen[str]:
        self._stop()
        self._child = subprocess.Popen(
            [sys.executable, "-c", "from edgetune.api.graph_reader import main; main()",
             "" if self.max_bytes is None else str(self.max_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        return self._child

    def _stop(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            self._child = None

    def close(self) -> None:
        with self._lock:
            self._stop()


def main() -> None:
    """The child: a JSON path per line in, `{"features": ...}` or `{"error": ...}` per line out;
    ends with its input."""
    from edgetune.devices.predictor import graph_features

    max_bytes = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] else None
    for line in sys.stdin:
        try:
            answer: dict[str, object] = {
                "features": graph_features(json.loads(line), max_bytes=max_bytes)}
        except (ValueError, OSError) as e:
            answer = {"error": str(e)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
