"""What an agent computes on (`Agent(device=...)`, `edgetune agent --device`): checked before it
registers, reported with its hardware, and passed to every measurement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgetune.cli import app
from edgetune.devices import Agent
from edgetune.devices.latency import MeasureConfig, pinned
from edgetune.devices.runtimes import AcceleratorUnavailableError

SERVER = "http://127.0.0.1:9"  # never contacted: these agents do not run


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # As on a machine without a GPU, also where this suite runs on one.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_an_agent_measures_on_the_cpu_unless_asked() -> None:
    agent = Agent(SERVER, name="edge")
    assert agent.device == "cpu"
    registration = agent._registration()
    assert registration["hardware"]["measures_on"] == "cpu"
    assert registration["name"] == "edge" and registration["threads"] == 1


def test_an_unknown_device_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"`device` is 'tpu'.*'cpu', 'cuda'"):
        Agent(SERVER, name="edge", device="tpu")


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize("runtimes", [["onnxruntime"], ["torchscript"]])
def test_cuda_without_a_gpu_refuses_to_start(runtimes: list[str]) -> None:
    with pytest.raises(AcceleratorUnavailableError, match=r"`device` is 'cuda'.*no CUDA GPU"):
        Agent(SERVER, name="edge", runtimes=runtimes, device="cuda")


@pytest.mark.usefixtures("no_gpu")
def test_the_cli_names_the_option_without_a_traceback() -> None:
    result = CliRunner().invoke(app, ["agent", "--server", SERVER, "--name", "edge",
                                      "--device", "cuda"])
    assert result.exit_code != 0
    assert "`device` is 'cuda'" in result.output and "Traceback" not in result.output


def test_an_agent_pins_its_measurements_to_its_first_cpus_by_default() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    agent = Agent(SERVER, name="edge")
    assert agent.cpus == (allowed[0],)
    assert agent._registration()["hardware"]["pinned_cpus"] == [allowed[0]]
    assert Agent(SERVER, name="edge", cpus="none").cpus is None
    assert Agent(SERVER, name="edge", cpus=[allowed[-1]]).cpus == (allowed[-1],)


def test_a_cpu_the_agent_may_not_use_is_refused() -> None:
    with pytest.raises(ValueError, match=r"`cpus` is \[4096\], but this agent may run on"):
        Agent(SERVER, name="edge", cpus=[4096])
    with pytest.raises(ValueError, match=r"`cpus` is \[-1\]"):
        MeasureConfig(cpus=(-1,))


def test_a_pinned_measurement_restores_the_threads_affinity() -> None:
    before = os.sched_getaffinity(0)
    cpu = min(before)
    with pinned((cpu,)):
        assert os.sched_getaffinity(0) == {cpu}
    assert os.sched_getaffinity(0) == before
    with pinned(None):
        assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_agent_measures_on_the_gpu(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    from torch import nn

    from edgetune.trainers.export import export_model

    path = export_model(nn.Sequential(nn.Linear(16, 8), nn.ReLU()), torch.randn(1, 16),
                        tmp_path, format="torchscript").path
    agent = Agent(SERVER, name="gpu", runtimes=["torchscript"], device="cuda")
    assert agent._registration()["hardware"]["measures_on"] == "cuda"
    assert agent._registration()["hardware"]["accelerator"]["kind"] == "cuda"
    monkeypatch.setattr(agent, "download", lambda sha256, directory: path)
    result = agent._measure({"runtime": "torchscript", "threads": 1, "warmup": 2,
                             "min_repeats": 5, "min_time_s": 0.0, "batch_size": 1,
                             "input_shape": [16], "artifact_sha256": "0" * 64})
    assert result["device"] == "cuda" and result["n"] >= 5 and result["p50_ms"] > 0


def test_a_failure_reason_is_short_printable_and_one_line() -> None:
    from edgetune.devices.agent import REASON_CHARS, failure_reason

    secret = "admin-token-" + "x" * 5000
    reason = failure_reason("could not measure the model abc", RuntimeError(
        f"expected a tensor\x00\x1b[0m, got '{secret}'\nsecond line: {secret}"))
    assert reason.startswith("could not measure the model abc: RuntimeError: expected a tensor")
    assert len(reason) <= REASON_CHARS and reason.isprintable()
    assert "second line" not in reason
    assert failure_reason("x", ValueError()) == "x: ValueError"


def test_limits_of_an_agent_are_checked() -> None:
    with pytest.raises(ValueError, match="`measure_timeout_s` is 0"):
        Agent(SERVER, name="edge", measure_timeout_s=0)
    with pytest.raises(ValueError, match="`max_input_elements` is 0"):
        Agent(SERVER, name="edge", max_input_elements=0)
    with pytest.raises(ValueError, match="`memory_bytes` is 1024"):
        Agent(SERVER, name="edge", memory_bytes=1024)


def test_an_agent_refuses_an_input_over_its_bound_before_downloading() -> None:
    agent = Agent(SERVER, name="edge", max_input_elements=1000)
    probe = {"runtime": "onnxruntime", "threads": 1, "warmup": 0, "min_repeats": 1,
             "min_time_s": 0.0, "batch_size": 1, "input_shape": [20000, 20000],
             "artifact_sha256": "0" * 64}
    with pytest.raises(ValueError, match=r"400,000,000 elements.*at most 1,000"):
        agent._measure(probe)  # no server runs: it never gets as far as downloading


@pytest.mark.parametrize(("change", "refusal"), [
    ({"threads": 4096}, r"4096 threads, but this agent runs at most \d+"),
    ({"artifact_sha256": "../../etc/passwd"}, r"artifact_sha256 is '\.\./\.\./etc/passwd'"),
    ({"artifact_sha256": "A" * 64}, "64 lowercase hex digits"),
])
def test_an_agent_refuses_a_probe_it_would_build_too_many_threads_or_a_path_for(
    change: dict[str, object], refusal: str
) -> None:
    # What the probe's requester chose: a thread per CPU at most, and a hash as a file name.
    agent = Agent(SERVER, name="edge", threads=1)
    probe = {"runtime": "onnxruntime", "threads": 1, "warmup": 0, "min_repeats": 1,
             "min_time_s": 0.0, "batch_size": 1, "input_shape": [4],
             "artifact_sha256": "0" * 64, **change}
    with pytest.raises(ValueError, match=refusal):
        agent._measure(probe)  # refused before any download (no server runs)
    assert agent.max_threads >= 1
