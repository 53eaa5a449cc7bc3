"""Shared fixtures: a real `edgetune serve` process on a free loopback port, and the admin
token every test process, server and agent shares."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from servers import TEST_TOKEN, RunningServer, start_server, stop_server

# Servers started by the tests install this admin token (EDGETUNE_ADMIN_TOKEN); the SDK, the
# CLI and agents send it (EDGETUNE_TOKEN). Both reach subprocesses through the environment.
os.environ["EDGETUNE_ADMIN_TOKEN"] = TEST_TOKEN
os.environ["EDGETUNE_TOKEN"] = TEST_TOKEN


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("server"), workers=2)
    yield running
    stop_server(running)
