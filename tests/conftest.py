"""Shared fixtures: a real `edgetune serve` process on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servers import RunningServer, start_server, stop_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("server"), workers=2)
    yield running
    stop_server(running)
