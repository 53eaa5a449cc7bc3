#!/usr/bin/env python3
"""Health checks for the edgetune image's containers, without curl or procps in the image.

    edgetune-healthcheck http URL      healthy when URL answers 2xx within 5 s
    edgetune-healthcheck process NAME  healthy when a process of this executable name runs

Exit code 0 is healthy, 1 unhealthy or misused: Docker reserves every other code.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

USAGE = "usage: edgetune-healthcheck http URL | process NAME"


def http_ok(url: str, timeout_s: float = 5.0) -> bool:
    # Only the container's own ports are checked: a file:// or other scheme is a mistake.
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"The URL is {url!r}, but must start with http:// or https://.")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def process_running(name: str, proc: Path = Path("/proc")) -> bool:
    """Whether a process whose executable's base name is `name` runs in this PID namespace."""
    for cmdline in proc.glob("[0-9]*/cmdline"):
        try:
            argv0 = cmdline.read_bytes().split(b"\0", 1)[0]
        except OSError:  # the process ended while we looked
            continue
        if argv0 and Path(argv0.decode(errors="replace")).name == name:
            return True
    return False


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("http", "process"):
        print(USAGE, file=sys.stderr)
        return 1
    kind, target = argv
    healthy = http_ok(target) if kind == "http" else process_running(target)
    if not healthy:
        print(f"unhealthy: {kind} {target}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
