"""docker-compose.yml: valid against the Compose Specification, and consistent with the CLI.

Docker cannot run here: these tests read the file as Compose would (YAML, then variable
interpolation, then the schema) and check what the stack relies on: each command exists in
`edgetune`'s CLI with those options, the settings each process gets are accepted, the start
order waits on health checks and on the migration step, and no secret has a default.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml

from edgetune.cli import app
from edgetune.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose" / "compose-spec.json"

#: Variables the stack must be given: no default, `docker compose up` refuses without them.
SECRETS = ("POSTGRES_PASSWORD", "EDGETUNE_ADMIN_TOKEN", "EDGETUNE_AGENT_TOKEN")
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET", re.IGNORECASE)
#: What the tests substitute for each secret (long enough for edgetune's 32-character minimum).
DUMMY_ENV = {name: f"dummy-{name.lower().replace('_', '-')}-0123456789abcdef" for name in SECRETS}
#: The commands that build `Settings` (the rest are clients of the API).
SERVER_SIDE = {"serve", "worker", "dashboard", "db", "token"}
IMAGE = "edgetune:local"

# Compose's interpolation: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
# `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}`.
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    """A `${VAR:?message}` whose variable is unset: Compose stops with the message."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution, applied to every string of the parsed file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["named"]
        op, arg = m["op"], m["arg"] or ""
        current = env.get(name)
        is_set = current is not None and (current != "" or not (op or "").startswith(":"))
        if op in (":?", "?"):
            if not is_set:
                raise MissingVariable(f"required variable {name} is missing a value: {arg}")
            return str(current)
        if op in (":-", "-"):
            return str(current) if is_set else arg
        if op in (":+", "+"):
            return arg if is_set else ""
        return current or ""

    result = INTERPOLATION.sub(substitute, value)
    if "${" in value.replace("$$", "") and "${" in result:
        raise AssertionError(f"interpolation this test does not understand: {value!r}")
    return result


def references(value: Any) -> list[re.Match[str]]:
    """Every variable reference in the file's strings (not `$$`)."""
    if isinstance(value, dict):
        return [m for k, v in value.items() for m in references(k) + references(v)]
    if isinstance(value, list):
        return [m for v in value for m in references(v)]
    if isinstance(value, str):
        return [m for m in INTERPOLATION.finditer(value) if not m["escaped"]]
    return []


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    return interpolate(raw, DUMMY_ENV)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def cli() -> Any:
    """The CLI's click command tree. (Typer ships its own copy of click: no isinstance checks.)"""
    root = typer.main.get_command(app)
    assert is_group(root)
    return root


def is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `KEY=value` form
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def shell_commands(command: str | list[str] | None) -> list[list[str]]:
    """The simple commands a service runs: its argv, or each command of an `sh -c` script."""
    if command is None:
        return []
    argv = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    if len(argv) >= 3 and argv[0] in ("sh", "bash", "/bin/sh", "/bin/bash") and argv[1] == "-c":
        lexer = shlex.shlex(argv[2], posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    else:
        tokens = argv
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append([])
        elif token == "exec" and not commands[-1]:
            continue
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def edgetune_commands(service: dict[str, Any]) -> list[list[str]]:
    return [c for c in shell_commands(service.get("command")) if c[0] == "edgetune"]


def resolve(cli: Any, argv: list[str]) -> tuple[Any, list[str], str]:
    """The CLI command that `edgetune ARGS...` runs (through `db`, `token` groups), its args."""
    command = cli
    args, path = argv[1:], ["edgetune"]
    while is_group(command):
        assert args, f"`{' '.join(path)}` needs a subcommand: {sorted(command.commands)}"
        name, args = args[0], args[1:]
        assert name in command.commands, (
            f"`{' '.join(path)} {name}` is not a command; there are {sorted(command.commands)}"
        )
        command = command.commands[name]
        path.append(name)
    return command, args, " ".join(path)


@contextmanager
def container_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Iterator[None]:
    """The process environment as the container has it: its variables, none of ours."""
    with monkeypatch.context() as m:
        for key in [k for k in os.environ if k.startswith("EDGETUNE_")]:
            m.delenv(key)
        for key, value in env.items():
            m.setenv(key, value)
        yield


def parse(command: Any, args: list[str], name: str, env: dict[str, str],
          monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Parse the args as the CLI would in that container (options also read from its env)."""
    with container_env(monkeypatch, env):
        try:
            ctx = command.make_context(name, list(args))
        except Exception as e:  # click's UsageError, BadParameter, MissingParameter
            message = e.format_message() if hasattr(e, "format_message") else str(e)
            pytest.fail(f"`{name} {shlex.join(args)}`: {message}")
        return dict(ctx.params)


def settings_for(env: dict[str, str], params: dict[str, Any],
                 monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The `Settings` a server-side command builds in that container (options override)."""
    overrides = {k: v for k, v in params.items() if k in Settings.model_fields and v is not None}
    with container_env(monkeypatch, env):
        return Settings(**overrides)


def uses_image(service: dict[str, Any]) -> bool:
    return "build" in service or service.get("image") == IMAGE


# --- the file as Compose reads it ------------------------------------------------------------
def test_vendored_schema_knows_the_conditions_we_use() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    depends_on = schema["definitions"]["service"]["properties"]["depends_on"]
    assert "service_completed_successfully" in json.dumps(depends_on)


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors
    )


def test_the_schema_check_catches_a_broken_file(compose: dict[str, Any]) -> None:
    # The validation above must be able to fail: a misspelt key and an unknown condition.
    schema = json.loads(SCHEMA_FILE.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["helthcheck"] = broken["services"]["api"].pop("healthcheck")
    broken["services"]["agent"]["depends_on"]["api"]["condition"] = "service_ready"
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(broken))
    assert len(errors) >= 2


def test_the_stack_has_every_service(services: dict[str, dict[str, Any]], cli: Any) -> None:
    assert set(services) == {"postgres", "prestart", "api", "worker", "ray-head", "ray-worker",
                             "dashboard", "agent"}
    ran = {resolve(cli, argv)[2] for s in services.values() for argv in edgetune_commands(s)}
    assert ran == {"edgetune db upgrade", "edgetune token create", "edgetune serve",
                   "edgetune worker", "edgetune dashboard", "edgetune agent"}
    workers = [s for s in services.values()
               if any(resolve(cli, argv)[2] == "edgetune worker" for argv in edgetune_commands(s))]
    assert sum(int(s.get("deploy", {}).get("replicas", 1)) for s in workers) == 2


# --- secrets ---------------------------------------------------------------------------------
def test_secrets_are_required_interpolations_without_defaults(raw: dict[str, Any]) -> None:
    refs = references(raw)
    for name in SECRETS:
        assert any((m["braced"] or m["named"]) == name for m in refs), f"{name} is never used"
    for m in refs:
        name = m["braced"] or m["named"]
        if SECRET_NAME.search(name):
            assert m["op"] == ":?" and (m["arg"] or "").strip(), (
                f"{m[0]!r}: a secret must be `${{{name}:?message}}` (set and not empty, no default)"
            )


def test_secret_settings_are_never_literal(raw: dict[str, Any]) -> None:
    required = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}$")
    for name, service in raw["services"].items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert required.match(value), f"{name}: {key} must come from `${{VAR:?message}}`"


@pytest.mark.parametrize("secret", SECRETS)
def test_compose_refuses_to_start_without_a_secret(raw: dict[str, Any], secret: str) -> None:
    for env in ({k: v for k, v in DUMMY_ENV.items() if k != secret}, {**DUMMY_ENV, secret: ""}):
        with pytest.raises(MissingVariable, match=secret):
            interpolate(raw, env)


def test_dummy_secrets_reach_the_services(services: dict[str, dict[str, Any]]) -> None:
    url = environment(services["api"])["EDGETUNE_DATABASE_URL"]
    assert f":{DUMMY_ENV['POSTGRES_PASSWORD']}@postgres:5432/" in url
    assert environment(services["postgres"])["POSTGRES_PASSWORD"] == DUMMY_ENV["POSTGRES_PASSWORD"]
    assert environment(services["api"])["EDGETUNE_ADMIN_TOKEN"] == DUMMY_ENV["EDGETUNE_ADMIN_TOKEN"]
    # The agent's token: installed by the pre-start step, used by the agent; nobody else has it.
    agent_token = DUMMY_ENV["EDGETUNE_AGENT_TOKEN"]
    holders = {n for n, s in services.items() if agent_token in environment(s).values()}
    assert holders == {"prestart", "agent"}
    assert "EDGETUNE_DATABASE_URL" not in environment(services["agent"])


# --- commands --------------------------------------------------------------------------------
def test_every_command_exists_in_the_cli_with_its_options(
    services: dict[str, dict[str, Any]], cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for service in services.values():
        for argv in edgetune_commands(service):
            command, args, path = resolve(cli, argv)
            parse(command, args, path, environment(service), monkeypatch)


def test_server_side_processes_accept_their_settings(
    services: dict[str, dict[str, Any]], cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in services.items():
        env = environment(service)
        for argv in edgetune_commands(service):
            if argv[1] not in SERVER_SIDE:
                continue
            command, args, path = resolve(cli, argv)
            params = parse(command, args, path, env, monkeypatch)
            settings = settings_for(env, params, monkeypatch)
            assert settings.env == "production", f"{name}: {path} is not in production mode"
            assert settings.url.startswith("postgresql"), f"{name}: {path} is not on PostgreSQL"
            assert settings.auth, f"{name}: authentication is off"


def test_every_edgetune_variable_is_read_by_something(
    services: dict[str, dict[str, Any]], cli: Any
) -> None:
    # A misspelt name would be ignored silently (Settings ignores unknown variables).
    known = {f"EDGETUNE_{field.upper()}" for field in Settings.model_fields}
    for name, service in services.items():
        read = set(known)
        for argv in edgetune_commands(service):
            command = resolve(cli, argv)[0]
            for param in command.params:
                envvars = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
                read.update(e for e in envvars if e)
        unread = {k for k in environment(service) if k.startswith("EDGETUNE_")} - read
        assert not unread, f"{name}: nothing reads {sorted(unread)}"


def test_the_api_listens_for_the_other_containers(
    services: dict[str, dict[str, Any]], cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = services["api"]
    (argv,) = edgetune_commands(api)
    command, args, path = resolve(cli, argv)
    params = parse(command, args, path, environment(api), monkeypatch)
    assert params["host"] == "0.0.0.0"
    assert params["workers"] == 0, "the worker service runs the workers, not the API"
    assert f"{params['port']}" in [str(p).rsplit(":", 1)[-1] for p in api["ports"]]
    agent = services["agent"]
    (argv,) = edgetune_commands(agent)
    command, args, path = resolve(cli, argv)
    agent_params = parse(command, args, path, environment(agent), monkeypatch)
    assert agent_params["server"] == f"http://api:{params['port']}"
    assert agent_params["token"] == DUMMY_ENV["EDGETUNE_AGENT_TOKEN"]


# --- start order and health --------------------------------------------------------------------
def test_every_dependency_waits_on_a_condition(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions"
        for target, spec in depends_on.items():
            assert target in services, f"{name} depends on an unknown service {target}"
            assert spec.get("condition") in ("service_healthy", "service_completed_successfully"), (
                f"{name} -> {target}: condition {spec.get('condition')!r}"
            )


def test_services_others_wait_on_have_health_checks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, spec in service.get("depends_on", {}).items():
            check = services[target].get("healthcheck", {})
            if spec["condition"] == "service_healthy":
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {target} to be healthy, but it has no health check"
                )
            else:
                assert services[target].get("restart") == "no", (
                    f"{name} waits for {target} to exit, but {target} restarts"
                )


def test_every_service_of_the_image_says_its_health_check(
    services: dict[str, dict[str, Any]]
) -> None:
    # The image's own HEALTHCHECK probes the API: no other service may inherit it by omission.
    for name, service in services.items():
        if uses_image(service):
            check = service.get("healthcheck", {})
            assert check.get("test") or check.get("disable") is True, name


def test_health_checks_probe_the_ports_the_commands_listen_on(
    services: dict[str, dict[str, Any]], cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("api", "dashboard"):
        service = services[name]
        (argv,) = edgetune_commands(service)
        command, args, path = resolve(cli, argv)
        port = parse(command, args, path, environment(service), monkeypatch)["port"]
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "edgetune-healthcheck", "http"], name
        assert test[3].startswith(f"http://127.0.0.1:{port}/"), name
    assert services["api"]["healthcheck"]["test"][3].endswith("/api/v1/health")
    for service in services.values():
        test = service.get("healthcheck", {}).get("test") or []
        if "edgetune-healthcheck" in test:
            assert test[test.index("edgetune-healthcheck") + 1] in ("http", "process")


def test_a_one_shot_step_migrates_before_anything_opens_the_database(
    services: dict[str, dict[str, Any]], cli: Any
) -> None:
    (prestart,) = [n for n, s in services.items()
                   if any(resolve(cli, a)[2] == "edgetune db upgrade" for a in edgetune_commands(s))]
    steps = [resolve(cli, a)[2] for a in edgetune_commands(services[prestart])]
    assert steps[0] == "edgetune db upgrade", "migrate first, then install the agent's token"
    assert "--wait-s" in edgetune_commands(services[prestart])[0]
    assert services[prestart]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in services.items():
        if name == prestart or not edgetune_commands(service):
            continue
        condition = service.get("depends_on", {}).get(prestart, {}).get("condition")
        assert condition == "service_completed_successfully", f"{name} does not wait for {prestart}"


def test_token_of_the_agent_is_agent_scoped(
    services: dict[str, dict[str, Any]], cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = services["prestart"]
    creates = [a for a in edgetune_commands(service) if resolve(cli, a)[2] == "edgetune token create"]
    (argv,) = creates
    command, args, path = resolve(cli, argv)
    params = parse(command, args, path, environment(service), monkeypatch)
    assert params["scope"] == "agent"
    assert params["token"] == DUMMY_ENV["EDGETUNE_AGENT_TOKEN"]
    assert "--token" not in args, "the secret would show in the container's command line"


# --- Ray and the shared data volume ------------------------------------------------------------
def test_workers_are_nodes_of_the_ray_cluster_they_address(
    services: dict[str, dict[str, Any]]
) -> None:
    head = shell_commands(services["ray-head"]["command"])
    assert head[0][:3] == ["ray", "start", "--head"] and "--port=6379" in head[0]
    for name in ("worker", "ray-worker"):
        joins = [c for c in shell_commands(services[name]["command"]) if c[:2] == ["ray", "start"]]
        assert joins and "--address=ray-head:6379" in joins[0], f"{name} does not join the head"
        assert services[name]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    address = environment(services["worker"])["EDGETUNE_RAY_ADDRESS"]
    # `host:6379` is the GCS: a worker that is not a Ray node itself could not use it.
    assert address == "ray-head:6379"


def test_processes_that_write_artifacts_share_one_data_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    for name in ("api", "worker", "ray-worker"):
        data_dir = environment(services[name]).get("EDGETUNE_DATA_DIR")
        assert data_dir == "/data", name
        assert f"data:{data_dir}" in services[name]["volumes"], name
    assert "data" in compose["volumes"] and "pgdata" in compose["volumes"]


def test_only_the_api_and_a_loopback_dashboard_are_published(
    services: dict[str, dict[str, Any]]
) -> None:
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"api", "dashboard"}
    # optuna-dashboard has no authentication: reachable from this host only.
    assert all(str(p).startswith("127.0.0.1:") for p in published["dashboard"])
