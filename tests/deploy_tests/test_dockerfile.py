"""The Dockerfile, read as text (no Docker here): the base, the CPU torch, the extras, the user."""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation"
    result = []
    for text in logical:
        keyword, _, args = text.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def runs() -> list[str]:
    return [args for keyword, args in instructions() if keyword == "RUN"]


def pip_installs() -> list[list[str]]:
    """The argv of every `pip install` in a RUN (each command of an `&&` chain)."""
    found: list[list[str]] = []
    for script in runs():
        lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands: list[list[str]] = [[]]
        for token in lexer:
            if token in ("&&", "||", ";"):
                commands.append([])
            else:
                commands[-1].append(token)
        found += [argv for argv in commands if argv[:2] == ["pip", "install"]]
    return found


def torch_pin() -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in dependencies if re.match(r"torch\b", d)]
    return pin.replace(" ", "")


def test_base_image_is_python_311_slim() -> None:
    froms = [args for keyword, args in instructions() if keyword == "FROM"]
    assert froms and froms[0].split()[0] == "python:3.11-slim"


def test_torch_is_the_cpu_build_installed_before_the_package() -> None:
    installs = pip_installs()
    with_index = [argv for argv in installs if "--index-url" in argv]
    (torch_install,) = with_index  # the CPU index, for this one package only
    assert torch_install[torch_install.index("--index-url") + 1] == TORCH_CPU_INDEX
    packages = [a for a in torch_install[2:] if not a.startswith("-") and a != TORCH_CPU_INDEX]
    assert packages == [torch_pin()] == ["torch==2.13.0"]
    assert not any("--extra-index-url" in argv for argv in installs)
    package = [argv for argv in installs if any("[" in a for a in argv)]
    assert package, "the package is never installed"
    assert installs.index(torch_install) < installs.index(package[0])


def test_package_is_installed_with_the_deployment_extras() -> None:
    (argv,) = [argv for argv in pip_installs() if any("[" in a for a in argv)]
    (target,) = [a for a in argv if "[" in a]
    extras = set(target[target.index("[") + 1:target.index("]")].split(","))
    assert {"postgres", "ray", "onnx"} <= extras
    assert "dev" not in extras
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert extras <= set(declared["optional-dependencies"])


def test_runs_as_a_user_that_is_not_root() -> None:
    users = [args for keyword, args in instructions() if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_has_a_health_check_and_a_default_command() -> None:
    keywords = [keyword for keyword, _ in instructions()]
    assert "HEALTHCHECK" in keywords and keywords[-1] == "CMD"
    (check,) = [args for keyword, args in instructions() if keyword == "HEALTHCHECK"]
    assert "/api/v1/health" in check


def test_copied_files_exist_and_are_in_the_build_context() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        # .dockerignore: the last matching pattern wins; `!` re-includes (and its parents).
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            parts = Path(path).parts
            prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
            if any(fnmatch.fnmatch(p, bare) for p in prefixes) or (
                bare.startswith("**/") and fnmatch.fnmatch(Path(path).name, bare[3:])
            ):
                result = not negate
        return result

    copies = [args for keyword, args in instructions() if keyword == "COPY"]
    assert copies
    for args in copies:
        sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not ignored(source), f"{source} is left out of the build context"
    # Secrets and local state stay out of the image.
    for path in (".env", ".git", "edgetune-data/edgetune.db", ".venv/bin/python"):
        assert ignored(path), path


def test_health_check_command_of_compose_is_installed_in_the_image() -> None:
    copies = [shlex.split(args) for keyword, args in instructions() if keyword == "COPY"]
    installed = {Path(c[-1]).name: c[-2] for c in copies if c[-1].startswith("/usr/local/bin/")}
    assert installed.get("edgetune-healthcheck") == "docker/healthcheck.py"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    used = {s["healthcheck"]["test"][1] for s in compose["services"].values()
            if s.get("healthcheck", {}).get("test", [None])[0] == "CMD"}
    # The image's own programs, Ray's CLI (in the image through the ray extra), PostgreSQL's.
    assert used <= {*installed, "ray"}, used
