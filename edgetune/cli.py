"""The `edgetune` command line: run the service, submit and watch searches, read fronts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgetune.errors import EdgetuneError
from edgetune.schemas import JobProgress, JobPublic, ParetoPublic
from edgetune.spec import JobSpec

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
# Tables need room: use a wide console when output goes to a file or a pipe (CI logs).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

DEFAULT_SERVER = "http://127.0.0.1:8000"
ServerOpt = Annotated[
    str, typer.Option("--server", envvar="EDGETUNE_SERVER", help="The edgetune server's URL.")
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (SQLite database, artifacts).",
                 envvar="EDGETUNE_DATA_DIR"),
]
DbOpt = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL; default SQLite in the data directory.",
                 envvar="EDGETUNE_DATABASE_URL"),
]


def main() -> None:
    app()


def _settings(**overrides: Any) -> Any:
    from edgetune.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        _fail(f"invalid settings: {e.errors()[0]['msg']}")


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- running the service -------------------------------------------------------------------
MaxTrialsOpt = Annotated[int | None, typer.Option(
    min=1, max=1024,
    help="The most trial processes a worker runs at once, over all its jobs "
         "(EDGETUNE_WORKER_MAX_TRIALS; default: the CPUs, at least 2).")]


@app.command()
def serve(
    host: Annotated[str, typer.Option(
        envvar="EDGETUNE_HOST",
        help="Address to listen on; a non-loopback one needs authentication on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Local worker processes to start.")] = 1,
    api_workers: Annotated[int, typer.Option(
        min=1, max=64, help="API server processes (uvicorn workers) on the one port.")] = 1,
    worker_max_trials: MaxTrialsOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "info",
) -> None:
    """Run the REST API and a pool of local workers on one database."""
    import uvicorn

    from edgetune.api import create_app
    from edgetune.storage import open_database

    settings = _settings(host=host, port=port, workers=workers, data_dir=data_dir,
                         database_url=database_url, worker_max_trials=worker_max_trials)
    _logging(log_level)
    open_database(settings.url).dispose()  # migrate once, before workers and the API race to
    env = {**os.environ, "EDGETUNE_DATA_DIR": str(settings.resolved_data_dir),
           "EDGETUNE_DATABASE_URL": settings.url,
           "EDGETUNE_WORKER_MAX_TRIALS": str(settings.worker_max_trials)}
    pool = WorkerPool(settings.workers, env=env, log_level=log_level)
    pool.start()
    try:
        # Event streams stay open while their jobs run: give them 5 s to close on shutdown.
        if api_workers == 1:
            uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                        log_level=log_level.lower(), timeout_graceful_shutdown=5)
        else:
            # Each API process builds its app from the same settings, through the environment;
            # ask/tell holds across them by the job's database lock.
            os.environ.update(env)
            uvicorn.run("edgetune.api.main:create_app", factory=True, workers=api_workers,
                        host=settings.host, port=settings.port, log_level=log_level.lower(),
                        timeout_graceful_shutdown=5)
    finally:
        pool.stop()


class WorkerPool:
    """`serve`'s worker processes: started, restarted when one dies, stopped at the end."""

    def __init__(self, size: int, *, env: dict[str, str], log_level: str) -> None:
        self.size = size
        self.env = env
        self.log_level = log_level
        self.processes: list[subprocess.Popen[bytes]] = []
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="worker-pool", daemon=True)

    def start(self) -> None:
        self.processes = [self._spawn() for _ in range(self.size)]
        self._watcher.start()

    def stop(self) -> None:
        self._stopping.set()
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "edgetune", "worker", "--parent-pid", str(os.getpid()),
             "--log-level", self.log_level],
            env=self.env,
        )

    def _watch(self) -> None:
        while not self._stopping.wait(2.0):
            for i, process in enumerate(self.processes):
                if process.poll() is not None and not self._stopping.is_set():
                    logging.getLogger(__name__).warning(
                        "worker %d exited with code %s; starting another", process.pid,
                        process.returncode,
                    )
                    self.processes[i] = self._spawn()


@app.command()
def worker(
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    once: Annotated[bool, typer.Option(help="Exit when no job is queued.")] = False,
    max_trials: MaxTrialsOpt = None,
    parent_pid: Annotated[int | None, typer.Option(hidden=True)] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "info",
) -> None:
    """Run one worker: claim queued jobs and run their trials, several jobs at once."""
    from edgetune.search.worker import Worker

    settings = _settings(data_dir=data_dir, database_url=database_url,
                         worker_max_trials=max_trials)
    _logging(log_level)
    w = Worker(settings, parent_pid=parent_pid)
    w.install_signal_handlers()
    w.run(once=once)


@app.command()
def dashboard(
    port: Annotated[int, typer.Option(help="Port for optuna-dashboard.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Start optuna-dashboard on the service's database: every job is a study there."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    from edgetune.storage import open_database

    url = open_database(settings.url).url
    # The script sits beside this Python's executable when edgetune was installed with pip.
    script = shutil.which("optuna-dashboard", path=f"{Path(sys.executable).parent}:"
                          f"{os.environ.get('PATH', '')}")
    if script is None:
        _fail("optuna-dashboard is not installed; `pip install optuna-dashboard`")
    from sqlalchemy.engine import make_url

    shown = make_url(url).render_as_string(hide_password=True)  # logs must not hold secrets
    console.print(f"optuna-dashboard on http://{host}:{port} reading {shown}")
    os.execv(script, [script, url, "--host", host, "--port", str(port)])


@app.command()
def agent(
    name: Annotated[str, typer.Option(help="The device's name; an existing one is re-attached.")],
    server: ServerOpt = DEFAULT_SERVER,
    token: Annotated[str | None, typer.Option(
        envvar="EDGETUNE_TOKEN", help="API token, sent as a Bearer header.")] = None,
    runtime: Annotated[list[str] | None, typer.Option(
        help="A runtime this device measures with (repeat for several).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Threads a measurement uses.")] = 1,
    device: Annotated[str, typer.Option(
        help="What models compute on: cpu, or cuda (the first GPU; refused without one).")
    ] = "cpu",
    cpus: Annotated[str, typer.Option(
        help="CPU ids to pin each measurement to, e.g. 2,3; 'auto': the first --threads the "
             "agent may use; 'none': unpinned.")] = "auto",
    heartbeat_s: Annotated[float, typer.Option(
        min=0.05, help="Seconds between heartbeats.")] = 5.0,
    poll_s: Annotated[float, typer.Option(
        min=0, max=30, help="How long one request waits for a probe.")] = 10.0,
    measure_timeout_s: Annotated[float, typer.Option(
        min=0.1, max=86_400, help="Wall-clock seconds one measurement (load, warm-up, timed "
                                  "runs) may take; past it the measuring process is killed and "
                                  "the probe fails.")] = 120.0,
    memory_bytes: Annotated[int, typer.Option(
        min=0, help="Address space of the measuring process (RLIMIT_AS, CPU only); a model "
                    "needing more fails its probe. 0: no limit.")] = 4 << 30,
    max_input_elements: Annotated[int, typer.Option(
        min=1, help="The most elements (batch included) of one probe's input the agent "
                    "builds; a larger probe fails with the reason.")] = 1 << 25,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "info",
) -> None:
    """Run a device agent: register this machine, heartbeat, measure its latency probes."""
    from edgetune.client import local_token
    from edgetune.devices import Agent

    token = token or local_token()
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        runner = Agent(server, name=name, token=token, runtimes=runtime or ["onnxruntime"],
                       threads=threads, device=device, cpus=_cpu_list(cpus),
                       heartbeat_s=heartbeat_s, poll_s=poll_s,
                       measure_timeout_s=measure_timeout_s,
                       memory_bytes=memory_bytes or None, max_input_elements=max_input_elements)
    except ValueError as e:
        _fail(str(e))
    runner.install_signal_handlers()
    try:
        runner.run()
    except Exception as e:
        _fail(f"the agent stopped: {e}")


def _cpu_list(value: str) -> list[int] | Literal["auto", "none"]:
    if value == "auto":
        return "auto"
    if value == "none":
        return "none"
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        _fail(f"--cpus is {value!r}, but must be 'auto', 'none' or CPU ids such as 0,1")


# --- operating it ----------------------------------------------------------------------------
db_app = typer.Typer(no_args_is_help=True, help="The service's database.")
app.add_typer(db_app, name="db")
token_app = typer.Typer(no_args_is_help=True, help="API tokens (on the database itself: for "
                                                    "operators; admins also have /tokens).")
app.add_typer(token_app, name="token")


@db_app.command("upgrade")
def db_upgrade(
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    wait_s: Annotated[float, typer.Option(
        min=0, help="Wait this long for the database to answer (a starting container).")] = 0,
) -> None:
    """Bring the database to the newest schema (Alembic `upgrade head`, Optuna's tables too).
    Processes upgrading one database at once take turns (a migration lock)."""
    import sqlalchemy

    from edgetune.storage import make_engine, open_database
    from edgetune.storage.migrations import current_revision

    settings = _settings(data_dir=data_dir, database_url=database_url)
    deadline = time.monotonic() + wait_s
    # First whether the database answers at all (a starting container: worth waiting for),
    # then the upgrade, whose errors are refusals: waiting would not help them, and "did not
    # answer" would be a lie (as it was for two upgrades racing on a fresh database).
    while True:
        try:
            engine = make_engine(settings.url)
        except (EdgetuneError, OSError) as e:
            _fail(str(e))
        try:
            with engine.connect():
                break
        except sqlalchemy.exc.OperationalError as e:
            if time.monotonic() >= deadline:
                within = f" within {wait_s:g} s" if wait_s else ""
                _fail(f"the database did not answer{within} (--wait-s waits for it): "
                      f"{e.orig or e}")
            time.sleep(1.0)
        finally:
            engine.dispose()
    try:
        db = open_database(settings.url)
    except (EdgetuneError, OSError) as e:
        _fail(str(e))
    except sqlalchemy.exc.SQLAlchemyError as e:
        cause = getattr(e, "orig", None) or e  # the driver's own error, where there is one
        _fail(f"the database refused the upgrade: {type(cause).__name__}: {cause}")
    try:
        console.print(f"database at revision {current_revision(db.engine)}")
    finally:
        db.dispose()


ScopeOpt = Annotated[str, typer.Option(help="user, agent or admin.")]


@token_app.command("create")
def token_create(
    tenant: Annotated[str, typer.Option(help="The tenant the token acts for.")] = "default",
    scope: ScopeOpt = "user",
    name: Annotated[str, typer.Option(help="What the token is for.")] = "",
    token: Annotated[str | None, typer.Option(
        envvar="EDGETUNE_NEW_TOKEN",
        help="Install this secret (32-256 characters) instead of generating one; installing it "
             "again changes nothing.")] = None,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Create a token and print its secret (shown this once)."""
    from edgetune.storage import TokenRepository, open_database

    settings = _settings(data_dir=data_dir, database_url=database_url)
    db = open_database(settings.url)
    try:
        row, secret = TokenRepository(db).create(tenant=tenant, scope=scope, name=name,
                                                 token=token)
    except (ValueError, EdgetuneError) as e:
        _fail(str(e))
    finally:
        db.dispose()
    err_console.print(f"token {row.id}: tenant {row.tenant}, scope {row.scope}")
    if token is None:
        print(secret)  # stdout holds the secret alone, for `TOKEN=$(edgetune token create)`


@token_app.command("list")
def token_list(data_dir: DataDirOpt = None, database_url: DbOpt = None,
               tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
               ) -> None:
    """Every token (never its secret)."""
    from edgetune.storage import TokenRepository, open_database

    db = open_database(_settings(data_dir=data_dir, database_url=database_url).url)
    try:
        rows = TokenRepository(db).list(tenant=tenant)
    finally:
        db.dispose()
    table = Table("id", "tenant", "scope", "name", "created", "revoked")
    for r in rows:
        table.add_row(r.id, r.tenant, r.scope, r.name, f"{r.created_at:%Y-%m-%d %H:%M}",
                      f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "")
    console.print(table)


@token_app.command("revoke")
def token_revoke(token_id: str, data_dir: DataDirOpt = None, database_url: DbOpt = None) -> None:
    """Revoke a token; API processes refuse it within seconds."""
    from edgetune.storage import TokenRepository, open_database

    db = open_database(_settings(data_dir=data_dir, database_url=database_url).url)
    try:
        TokenRepository(db).revoke(token_id)
    except EdgetuneError as e:
        _fail(str(e))
    finally:
        db.dispose()
    console.print(f"revoked {token_id}")


# --- using it --------------------------------------------------------------------------------
def load_spec_file(path: Path) -> JobSpec:
    """Read a JobSpec from YAML or JSON (safe loading only) and validate it."""
    try:
        text = path.read_text()
    except OSError as e:
        _fail(f"cannot read {path}: {e.strerror}")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        _fail(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        _fail(f"{path}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}")


def _client(server: str, data_dir: Path | None = None) -> Any:
    from edgetune.client import Client, local_token

    return Client(server, token=local_token(data_dir))


@app.command()
def submit(
    spec_file: Annotated[Path, typer.Argument(help="JobSpec as YAML or JSON.")],
    server: ServerOpt = DEFAULT_SERVER,
    watch: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
) -> None:
    """Submit a search."""
    spec = load_spec_file(spec_file)
    with _client(server) as client:
        job = _call(client.submit, spec)
        console.print(f"submitted job [bold]{job.id}[/bold] ({job.name}), study {job.study_name}")
        if watch:
            job = watch_job(client, job.id)
            print_pareto(_call(client.pareto, job.id))
            if job.status != "succeeded":
                raise typer.Exit(1)


@app.command()
def jobs(
    server: ServerOpt = DEFAULT_SERVER,
    status: Annotated[str | None, typer.Option(help="Only jobs with this status.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
) -> None:
    """List jobs, newest first."""
    with _client(server) as client:
        page = _call(client.list, status=status, limit=limit)
    table = Table("id", "name", "status", "trials", "created", title=f"{page.count} jobs")
    for job in page.data:
        p = job.progress
        table.add_row(job.id, job.name, job.status, f"{p.finished}/{p.n_trials}",
                      job.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


@app.command()
def show(job_id: str, server: ServerOpt = DEFAULT_SERVER) -> None:
    """Show one job: status, progress, error, spec."""
    with _client(server) as client:
        job = _call(client.get, job_id)
    p = job.progress
    console.print(f"[bold]{job.name}[/bold] {job.id}: {job.status}")
    console.print(f"  trials: {p.complete} complete, {p.pruned} pruned, {p.failed} failed, "
                  f"{p.running} running, of {p.n_trials}"
                  + (f" ({p.retried} retried after a worker stopped)" if p.retried else ""))
    console.print(f"  study: {job.study_name}")
    if job.error:
        console.print(f"  [red]error:[/red] {job.error}")
    console.print_json(job.spec.model_dump_json())


@app.command()
def cancel(job_id: str, server: ServerOpt = DEFAULT_SERVER) -> None:
    """Cancel a queued or running job."""
    with _client(server) as client:
        job = _call(client.cancel, job_id)
    console.print(f"job {job.id}: {job.status}")


@app.command()
def pareto(
    job_id: str,
    server: ServerOpt = DEFAULT_SERVER,
    all_ranks: Annotated[bool, typer.Option("--all", help="Also the dominated trials.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the front to a .png, .svg or .html file.")
    ] = None,
    x: Annotated[str | None, typer.Option(help="Objective on the plot's x axis.")] = None,
    y: Annotated[str | None, typer.Option(help="Objective on the plot's y axis.")] = None,
    objectives: Annotated[
        str | None, typer.Option(help="Rank on a subset, e.g. accuracy,size_bytes.")
    ] = None,
) -> None:
    """Print a job's Pareto front as a table (and plot it)."""
    subset = [o.strip() for o in objectives.split(",")] if objectives else None
    with _client(server) as client:
        front = _call(client.pareto, job_id, include_dominated=all_ranks, objectives=subset)
        if plot is not None:
            from edgetune.plots import plot_front

            everything = _call(client.pareto, job_id, include_dominated=True, limit=500,
                               objectives=subset)
            try:
                plot_front(everything, plot, x=x, y=y)
            except ValueError as e:
                _fail(str(e))
    if as_json:
        console.print_json(front.model_dump_json())
    else:
        print_pareto(front)
    if plot is not None:
        console.print(f"wrote {plot}")


@app.command()
def watch(job_id: str, server: ServerOpt = DEFAULT_SERVER) -> None:
    """Follow a job live: progress bar, current front and hypervolume; then its front."""
    with _client(server) as client:
        job = watch_job(client, job_id)
        print_pareto(_call(client.pareto, job.id))
    if job.status != "succeeded":
        raise typer.Exit(1)


@app.command()
def report(
    job_id: str,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the HTML.")] = Path(
        "report.html"
    ),
    server: ServerOpt = DEFAULT_SERVER,
) -> None:
    """Write a self-contained HTML report: front, hypervolume curve, importances, best models."""
    from edgetune.report import write_report

    with _client(server) as client:
        job = _call(client.get, job_id)
        front = _call(client.pareto, job_id, include_dominated=True, limit=500)
        trials = []
        offset = 0
        while True:
            page = _call(client.trials, job_id, offset=offset, limit=500)
            trials += page.data
            offset += len(page.data)
            if not page.data or offset >= page.count:
                break
        history = _call(client.hypervolume, job_id)
    write_report(out, job=job, front=front, trials=trials,
                 hypervolume_history=[(p.trial_number, p.hypervolume) for p in history.data])
    console.print(f"wrote {out}")


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="Data directory for the demo.")] = Path(
        "edgetune-data"
    ),
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 0,
    n_trials: Annotated[int | None, typer.Option(help="Override the demo's trial budget.")] = None,
) -> None:
    """Start a server on SQLite, run the digits demo search, print its front, stop."""
    spec_text = resources.files("edgetune.examples").joinpath("digits_demo.yaml").read_text()
    spec = JobSpec.model_validate(yaml.safe_load(spec_text))
    if n_trials:
        spec.budget.n_trials = n_trials
    port = port or free_port()
    server = f"http://127.0.0.1:{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    console.print(f"starting edgetune on {server} (data in {data_dir.resolve()}, log {log_path})")
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgetune", "serve", "--port", str(port),
             "--data-dir", str(data_dir), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        with _client(server) as client:
            wait_for_server(client, process, timeout=120)
        # The server wrote its local token into the data directory as it started.
        with _client(server, data_dir) as client:
            job = _call(client.submit, spec)
            console.print(f"submitted [bold]{spec.name}[/bold]: job {job.id}, "
                          f"study {job.study_name}")
            job = watch_job(client, job.id)
            print_pareto(_call(client.pareto, job.id))
            if job.status != "succeeded":
                _fail(f"the demo job {job.status}: {job.error}")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        console.print("server stopped")


# --- helpers of the commands -------------------------------------------------------------------
def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    import httpx

    try:
        return fn(*args, **kwargs)
    except EdgetuneError as e:
        _fail(str(e))
    except httpx.HTTPError as e:
        _fail(f"cannot reach the server: {e}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_server(client: Any, process: subprocess.Popen[bytes], *, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _fail(f"the server exited with code {process.returncode}; see its log")
        try:
            client.health()
            return
        except (httpx.HTTPError, EdgetuneError):
            time.sleep(0.3)
    _fail(f"the server did not answer within {timeout} s")


def watch_job(client: Any, job_id: str) -> JobPublic:
    """Follow a job's event stream with a progress bar and the current front until it ends."""
    import httpx

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("queued", total=None, detail="")
        counts = front = ""
        try:
            for name, data in client.events(job_id):
                if name == "progress":
                    p = JobProgress.model_validate(data)
                    counts = (f"{p.complete} complete, {p.pruned} pruned, {p.failed} failed, "
                              f"{p.running} running"
                              + (f", {p.retried} retried" if p.retried else ""))
                    bar.update(task, description=data["status"], total=p.n_trials,
                               completed=p.finished, detail=counts + front)
                    _log_line(f"{data['status']}: {p.finished}/{p.n_trials} trials "
                              f"({counts}{front})")
                elif name == "front":
                    hv = data["hypervolume"]
                    hv_text = f", hypervolume {hv:.4g}" if hv is not None else ""
                    front = f"; front {len(data['trials'])} trials{hv_text}"
                    bar.update(task, detail=counts + front)
                    _log_line(f"front: trials {data['trials']}{hv_text}")
                elif name == "trial" and data["state"] == "fail":
                    bar.console.print(f"[red]trial {data['number']} failed:[/red] "
                                      f"{data.get('error')}")
        except (httpx.HTTPError, EdgetuneError) as e:
            # The stream broke (a proxy, a restarted server): keep going by polling.
            bar.console.print(f"event stream lost ({e}); polling instead")
            _call(client.wait, job_id, poll_interval=1.0)
    job: JobPublic = _call(client.get, job_id)
    style = "green" if job.status == "succeeded" else "red"
    console.print(f"job {job.id} [{style}]{job.status}[/{style}]"
                  + (f": {job.error}" if job.error else ""))
    return job


def _log_line(line: str) -> None:
    # No live bar in a log file or CI output: print a line whenever something happens.
    if not console.is_terminal:
        console.print(line, highlight=False)


def print_pareto(front: ParetoPublic) -> None:
    names = [o.name for o in front.objectives]
    arrows = {"minimize": "↓", "maximize": "↑"}
    hv = f", hypervolume {front.hypervolume:.4g}" if front.hypervolume is not None else ""
    table = Table(
        "trial", "rank", *(f"{o.name} {arrows[o.direction]}" for o in front.objectives),
        "params",
        title=f"Pareto front: {front.front_size} of {front.n_complete} completed trials{hv}",
        caption="* knee: the most balanced trade-off" if any(t.knee for t in front.data)
        else None,
    )
    for t in front.data:
        cells = [_fmt(t.values[n]) for n in names]
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(t.params.items()))
        mark = "*" if t.knee else ("" if t.feasible else " (infeasible)")
        table.add_row(f"{t.number}{mark}", str(t.rank), *cells, params)
    console.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.4g}"
    return str(value)
