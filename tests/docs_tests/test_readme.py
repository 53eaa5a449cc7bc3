"""The README's examples work as written: each Python snippet runs against a real server (with
smaller budgets), each YAML job spec passes the checks a submission passes, and each `edgetune`
command line parses with the real CLI."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from pydantic import ValidationError
from servers import RunningServer, start_server, stop_server
from specs import SMALL_SUPERNET

from edgetune.cli import app
from edgetune.client import Client
from edgetune.search.validation import validate_job_spec
from edgetune.spec import JobSpec

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def snippets(language: str) -> list[tuple[int, str]]:
    """The README's fenced blocks in `language`, with the line each starts on."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(2))
            for m in FENCE.finditer(text) if m.group(1) == language]


def substituted(code: str, replacements: dict[str, str]) -> str:
    """`code` with each of `replacements` made, every one of which must apply: a README edit
    that removes one should change this test too, not skip what it checks."""
    for old, new in replacements.items():
        assert old in code, f"the README snippet no longer has {old!r}:\n{code}"
        code = code.replace(old, new)
    return code


# --- Python: run against a real server ------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("readme"), workers=1)
    yield running
    stop_server(running)


def train_one_epoch(params: dict[str, Any]) -> tuple[float, float]:
    """What the ask/tell example leaves to the user: an accuracy and a latency that the
    parameters decide (so the pruner has something to compare)."""
    lr, width = float(params["lr"]), int(params["width"])
    return 1.0 - abs(math.log10(lr) + 2.5) / 3, width / 16


def run_sdk_example(code: str, server: RunningServer) -> dict[str, object]:
    code = substituted(code, {
        'Client("http://127.0.0.1:8000")': "Client(SERVER)",
        '"n_trials": 20, "parallelism": 2': '"n_trials": 2, "parallelism": 2',
    })
    scope: dict[str, object] = {"SERVER": server.url}
    exec(compile(code, str(README), "exec"), scope)
    return scope


def run_ask_tell_example(code: str, server: RunningServer) -> dict[str, object]:
    code = substituted(code, {
        'Client("http://127.0.0.1:8000")': "Client(SERVER)",
        '"n_trials": 50, "parallelism": 8': '"n_trials": 4, "parallelism": 8',
    })
    # The example continues the one before it, which imports Client.
    scope: dict[str, object] = {"SERVER": server.url, "Client": Client,
                                "train_one_epoch": train_one_epoch}
    exec(compile(code, str(README), "exec"), scope)
    return scope


def run_one_shot_example(code: str, server: RunningServer) -> dict[str, object]:
    code = substituted(code, {
        'Client("http://127.0.0.1:8000")': "Client(SERVER)",
        '"epochs": 10': '"epochs": 1',
        '"supernet_epochs": 20, "finalists": 4': '"supernet_epochs": 1, "finalists": 1',
        '"n_trials": 64': '"n_trials": 3',
        '"params": [{"type": "fixed", "name": "resolution", "value": 8}]':
            '"params": SMALL_SUPERNET',
    })
    scope: dict[str, object] = {"SERVER": server.url, "SMALL_SUPERNET": SMALL_SUPERNET}
    exec(compile(code, str(README), "exec"), scope)
    return scope


def _runner(code: str) -> Callable[[str, RunningServer], dict[str, object]]:
    if '"mode": "ask-tell"' in code:
        return run_ask_tell_example
    if '"one_shot"' in code:
        return run_one_shot_example
    if "client.submit(" in code:
        return run_sdk_example
    raise AssertionError(f"no way to run this README snippet yet; add one here:\n{code}")


PYTHON = snippets("python")


@pytest.mark.slow
@pytest.mark.parametrize(("line", "code"), PYTHON, ids=[f"line-{n}" for n, _ in PYTHON])
def test_each_python_example_runs_against_a_real_server(
    line: int, code: str, server: RunningServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # the SDK example downloads best.onnx where it runs
    scope = _runner(code)(code, server)
    job: Any = scope["job"]
    with Client(server.url) as client:
        ended = client.get(job.id)
        assert ended.status == "succeeded", ended.error
        assert client.pareto(ended.id).front_size >= 1
        if ended.spec.algorithm.one_shot is not None:
            # The front holds the trained finalist, not the subnets evaluated on the way.
            front = client.pareto(ended.id).data
            assert [t.user_attrs.get("one_shot") for t in client.trials(ended.id).data
                    if t.number in {f.number for f in front}] == ["finetune"]
        if ended.spec.mode == "ask-tell":
            # The plain name `latency_ms` was told as the objective latency_ms@local.
            trials = client.trials(ended.id, state="complete").data
            assert trials and all(set(t.values) == {"accuracy", "latency_ms@local"}
                                  for t in trials)
    if "download_artifact" in code:
        assert (tmp_path / "best.onnx").stat().st_size > 0


def test_the_python_examples_are_the_ones_this_file_runs() -> None:
    assert [_runner(code) for _, code in PYTHON] == [run_sdk_example, run_one_shot_example,
                                                     run_ask_tell_example]


# --- YAML: job specs -------------------------------------------------------------------------
YAML = snippets("yaml")


@pytest.mark.parametrize(("line", "text"), YAML, ids=[f"line-{n}" for n, _ in YAML])
def test_each_yaml_job_spec_passes_what_a_submission_is_checked_for(line: int, text: str) -> None:
    spec = JobSpec.model_validate(yaml.safe_load(text))  # as the CLI reads a file
    validate_job_spec(spec)  # as the server checks it before queueing
    assert spec.name


def test_the_documented_422_is_the_one_a_bad_budget_gets() -> None:
    text = README.read_text()
    documented = ('{"loc": ["body", "budget", "n_trials"], '
                  '"msg": "Input should be greater than or equal to 1"}')
    assert documented in text
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({"name": "x", "budget": {"n_trials": 0}})
    error = info.value.errors()[0]
    assert (list(error["loc"]), error["msg"]) == (
        ["budget", "n_trials"], "Input should be greater than or equal to 1"
    )


# --- bash: every `edgetune` command line parses -----------------------------------------------
def shell_lines(code: str, first: int) -> Iterator[tuple[int, str]]:
    """The command lines of a shell snippet, a continued line (`\\` at its end) joined to the
    next, each with the README line it starts on."""
    pending: list[str] = []
    for offset, text in enumerate(code.splitlines()):
        if not pending:
            start = first + offset
        if text.endswith("\\"):
            pending.append(text[:-1])
            continue
        yield start, " ".join([*pending, text])
        pending = []


def command_args(text: str) -> list[str] | None:
    """The arguments of the `edgetune` command a shell line runs, None if it runs none:
    placeholders (`<token>`) and optional parts (`[--wait-s N]`) are taken as written;
    environment assignments and a `docker compose exec api` in front, `&` and comments are
    dropped."""
    words = shlex.split(re.sub(r"<[^>]*>", "X", text).replace("[", "").replace("]", ""),
                        comments=True)
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words.pop(0)
    if words[:3] == ["docker", "compose", "exec"]:
        words = words[4:]
    if not words or words[0] != "edgetune":
        return None
    return [w for w in words[1:] if w != "&"]


def edgetune_commands() -> list[tuple[int, list[str]]]:
    """The `edgetune ...` command lines of the README: in bash blocks, and in inline code."""
    text = README.read_text()
    found = []
    for first, code in snippets("bash"):
        for line, command in shell_lines(code, first + 1):
            for part in command.split("&&"):
                if (args := command_args(part)) is not None:
                    found.append((line, args))
    # Inline code outside the blocks (blanked out, so that positions keep their lines).
    prose = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    for m in re.finditer(r"`([^`]+)`", prose):
        span = " ".join(m.group(1).split())
        if "edgetune " in span and (args := command_args(span)) is not None:
            found.append((prose.count("\n", 0, m.start()) + 1, args))
    return found


COMMANDS = edgetune_commands()


@pytest.mark.parametrize(("line", "args"), COMMANDS,
                         ids=[f"line-{n}-{'-'.join(a[:2])}" for n, a in COMMANDS])
def test_each_command_line_names_a_real_command_and_options(line: int, args: list[str]) -> None:
    # Looked up in the CLI's own click command, not run: the lines start servers and agents.
    # (typer's own copy of click, so groups are told by their `commands`.)
    command: Any = typer.main.get_command(app)
    words = list(args)
    while hasattr(command, "commands") and words and words[0] in command.commands:
        command = command.commands[words.pop(0)]
    where = f"README line {line}: edgetune {' '.join(args)}"
    assert not hasattr(command, "commands"), f"{where} names no command"
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    unknown = [w for w in words if w.startswith("-") and w.split("=")[0] not in options]
    assert not unknown, f"{where}: edgetune {command.name} has no option {', '.join(unknown)}"


def test_the_readme_shows_the_commands_it_promises() -> None:
    shown = {args[0] for _, args in COMMANDS}
    assert {"serve", "submit", "jobs", "watch", "pareto", "report", "dashboard", "demo"} <= shown
