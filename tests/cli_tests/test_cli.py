"""The CLI: spec files (safe YAML and JSON only) and the commands' help."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from edgetune.cli import app, load_spec_file

runner = CliRunner()


def test_loads_yaml_and_json_specs(tmp_path) -> None:
    (tmp_path / "s.yaml").write_text("name: y\nbudget:\n  n_trials: 3\n")
    (tmp_path / "s.json").write_text(json.dumps({"name": "j", "seed": 4}))
    assert load_spec_file(tmp_path / "s.yaml").budget.n_trials == 3
    assert load_spec_file(tmp_path / "s.json").seed == 4


def test_the_shipped_demo_spec_is_valid() -> None:
    from importlib import resources

    from edgetune.search import validate_job_spec

    path = resources.files("edgetune.examples").joinpath("digits_demo.yaml")
    spec = load_spec_file(path)  # type: ignore[arg-type]
    validate_job_spec(spec)
    assert len(spec.objectives) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nbudget: {n_trials: 0}\n", "budget.n_trials"),
        ("!!python/object/apply:os.system ['true']\n", "is not valid YAML"),
        ("name: [unclosed\n", "is not valid YAML"),
    ],
)
def test_bad_spec_files_exit_with_a_readable_error(tmp_path, capsys, text, message) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(typer.Exit):
        load_spec_file(path)
    # rich wraps long lines; compare without whitespace
    assert "".join(message.split()) in "".join(capsys.readouterr().err.split())


def test_every_command_has_help() -> None:
    for command in ("serve", "worker", "submit", "jobs", "show", "cancel", "pareto", "demo",
                    "dashboard"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output


def test_submit_to_a_server_that_is_down_fails_cleanly(tmp_path) -> None:
    (tmp_path / "s.yaml").write_text("name: y\n")
    result = runner.invoke(app, ["submit", str(tmp_path / "s.yaml"), "--server",
                                 "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "cannot reach the server" in result.output
