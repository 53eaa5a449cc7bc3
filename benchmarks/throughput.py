"""How fast the service runs trials, side by side with the tools it wraps (issue 7).

Run: python benchmarks/throughput.py [--parts asktell,workers,ray] [--quick]
     ->  benchmarks/results/throughput.md (a `--quick` smoke run only prints, unless `--out`)

1. asktell: ask+tell trials per second through the REST API (`edgetune serve --workers 0
   --api-workers <cores>` on a fresh PostgreSQL database, one ask-tell job, TPE) from 8
   client processes, against Optuna used directly (`study.ask()` / `study.tell()`) from 8
   processes on the same database with the sampler the service builds for `tpe`.
   Target: service / direct >= 1.0.
2. workers: parallel efficiency of a digits job (image-classifier, the `cnn` space, one thread
   per trial) run by `edgetune serve --workers 1` and `--workers 2`, one trial per worker at a
   time, on SQLite. Efficiency = wall(1 worker) / wall(2 workers). Target: >= 1.7.
3. ray: seconds per trivial trial (the `function` trainer) on our Ray backend (actors reused),
   against plain Ray Tune with its defaults (`tune.Tuner(trainable, num_samples=N)`). Ray's
   start (`ray.init`) is timed apart. Target: <= 0.3 s per trial.

PostgreSQL: `EDGETUNE_TEST_POSTGRES_URL` (default postgresql+psycopg://postgres@127.0.0.1:5432/
test); the script creates a database `edgetune_bench_<random>` beside it and drops it at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from _token import use_token

from edgetune.cli import free_port, wait_for_server
from edgetune.client import APIError, Client
from edgetune.errors import ConflictError, EdgetuneError

OUT = Path(__file__).parent / "results" / "throughput.md"
ADMIN_URL = os.environ.get(
    "EDGETUNE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PARTS = ("asktell", "workers", "ray")
CLIENTS = 8  # concurrent ask/tell clients, and Optuna processes
N_PARAMS = 8  # floats in [0, 1] of the ask/tell space
TARGET_RATIO = 1.0
TARGET_EFFICIENCY = 1.7
TARGET_RAY_S = 0.3
#: Server log lines worth showing in the report: errors, whatever logged them.
LOG_PROBLEM = re.compile(r"Traceback|ERROR|Error:|Exception|CRITICAL")


@dataclass(frozen=True)
class Sizes:
    asktell_trials: int
    digits_trials: int
    digits_epochs: int
    ray_trials: int


FULL = Sizes(asktell_trials=400, digits_trials=12, digits_epochs=15, ray_trials=40)
QUICK = Sizes(asktell_trials=40, digits_trials=4, digits_epochs=2, ray_trials=6)


@dataclass
class Section:
    """One part's share of the report: its markdown lines and its targets' verdicts."""

    title: str
    lines: list[str]
    verdicts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def verdict(met: bool) -> str:
    return "met" if met else "missed"


# --- processes, servers, databases ----------------------------------------------------------
@dataclass
class ClientRun:
    """What one client process did between the start barrier and its last tell."""

    started: float = 0.0  # time.time(): comparable across processes
    ended: float = 0.0
    told: int = 0
    retries: int = 0  # asks answered 409 for parallelism, asked again
    resumed: int = 0  # asks that gave back the client's own unfinished trial
    ask_s: float = 0.0  # summed time of the asks that gave a trial (with sampling the params)
    tell_s: float = 0.0  # summed time of the tells
    errors: list[str] = field(default_factory=list)


def run_processes(
    target: Callable[..., None], args: Sequence[tuple[Any, ...]], *, timeout_s: float
) -> list[ClientRun]:
    """Start one spawned process per `args` (each called as `target(*args, barrier, queue)`),
    release them together once all are ready, and collect one `ClientRun` from each (sent as
    a dict: a class of a spawned `__main__` does not unpickle here)."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(args))
    queue = ctx.Queue()
    processes = [ctx.Process(target=target, args=(*a, barrier, queue)) for a in args]
    for p in processes:
        p.start()
    try:
        return [ClientRun(**queue.get(timeout=timeout_s)) for _ in processes]
    finally:
        for p in processes:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()


def spawned(target: Callable[..., dict[str, Any]], *args: Any, log: Path,
            timeout_s: float) -> dict[str, Any]:
    """`target(*args)` in a fresh spawned process whose stdout and stderr go to `log`."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_logged_call, args=(target, args, str(log), queue))
    process.start()
    try:
        result: dict[str, Any] = queue.get(timeout=timeout_s)
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()
    if "error" in result:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{target.__name__} failed:\n{result['error']}\nits log:\n{tail}")
    return result


def _logged_call(target: Callable[..., dict[str, Any]], args: tuple[Any, ...], log: str,
                 queue: Any) -> None:
    with open(log, "ab") as out:  # fds, so that Ray's and children's output goes there too
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    try:
        queue.put(target(*args))
    except BaseException:
        queue.put({"error": traceback.format_exc()})


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the PostgreSQL server of `ADMIN_URL`, dropped at the end."""
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"edgetune_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def postgres_version() -> str:
    try:
        admin = sa.create_engine(ADMIN_URL)
        with admin.connect() as conn:
            version = str(conn.exec_driver_sql("SHOW server_version").scalar())
        admin.dispose()
        return version
    except sa.exc.SQLAlchemyError:
        return "not reachable"


@dataclass(frozen=True)
class Server:
    url: str
    client: Client
    log: Path  # the server's output, its workers' too


@contextmanager
def serve(data_dir: Path, *, workers: int, database_url: str | None = None,
          env: Mapping[str, str] | None = None, log_level: str = "warning",
          api_workers: int = 1) -> Iterator[Server]:
    """A real `edgetune serve` for the block."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = data_dir / "server.log"
    command = [sys.executable, "-m", "edgetune", "serve", "--port", str(port), "--data-dir",
               str(data_dir), "--workers", str(workers), "--log-level", log_level,
               "--api-workers", str(api_workers)]
    if database_url:
        command += ["--database-url", database_url]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        with Client(url, timeout=120) as client:
            wait_for_server(client, process, timeout=120)
            yield Server(url, client, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def log_problems(log: Path, limit: int = 60) -> list[str]:
    """The server log from its first error on (at most `limit` lines); [] when it has none."""
    lines = log.read_text(errors="replace").splitlines()
    first = next((i for i, line in enumerate(lines) if LOG_PROBLEM.search(line)), None)
    return [] if first is None else lines[first:first + limit]


# --- part 1: ask/tell on PostgreSQL ----------------------------------------------------------
def sphere(params: Mapping[str, float]) -> float:
    """The trivial objective every client computes between its ask and its tell."""
    return sum((float(v) - 0.5) ** 2 for v in params.values())


def asktell_spec(n_trials: int) -> dict[str, Any]:
    return {
        "name": "asktell-throughput", "mode": "ask-tell", "seed": None,
        "space": {"name": None, "params": [
            {"type": "float", "name": f"x{i}", "low": 0.0, "high": 1.0}
            for i in range(N_PARAMS)
        ]},
        "objectives": [{"name": "f1"}],
        "algorithm": {"sampler": "tpe"},
        "budget": {"n_trials": n_trials, "parallelism": CLIENTS},
    }


def service_client(url: str, job_id: str, index: int, barrier: Any, queue: Any) -> None:
    """Ask, compute, tell until the job has asked its whole budget (one spawned process)."""
    run = ClientRun()
    client_id = f"bench-{index}"
    with Client(url, timeout=60) as client:
        barrier.wait()
        run.started = time.time()
        while len(run.errors) < 20:
            start = time.perf_counter()
            try:
                asked = client.ask(job_id, client_id=client_id)
            except ConflictError as e:
                if "parallelism" in str(e):
                    run.retries += 1
                    time.sleep(0.005)
                    continue
                if "asked all" not in str(e) and "has succeeded" not in str(e):
                    run.errors.append(f"ask: 409 {e}")
                break
            except (APIError, EdgetuneError, httpx.HTTPError) as e:
                run.errors.append(f"ask: {type(e).__name__}: {e}")
                time.sleep(0.05)  # asking again with the same client id resumes its trial
                continue
            run.ask_s += time.perf_counter() - start
            run.resumed += asked.resumed
            value = sphere(asked.params)
            start = time.perf_counter()
            try:
                client.tell(job_id, asked.number, {"f1": value})
            except (APIError, EdgetuneError, httpx.HTTPError) as e:
                run.errors.append(f"tell {asked.number}: {type(e).__name__}: {e}")
                continue
            run.tell_s += time.perf_counter() - start
            run.told += 1
            run.ended = time.time()
    queue.put(asdict(run))


def tpe_sampler(n_trials: int) -> Any:
    """The sampler the service builds for the job's `tpe`, built by the same registry entry:
    Optuna's TPESampler (multivariate, group, 5 random startup trials, no seed)."""
    from edgetune.search.registry import SAMPLERS, AlgorithmContext
    from edgetune.spaces import resolve_space
    from edgetune.spec import JobSpec

    spec = JobSpec.model_validate(asktell_spec(n_trials))
    params = resolve_space(spec.space.name, spec.space.params)
    return SAMPLERS["tpe"].build(AlgorithmContext(spec=spec, params=params))


def direct_client(url: str, study_name: str, n_trials: int, n_total: int, barrier: Any,
                  queue: Any) -> None:
    """Plain Optuna on the same database: `n_trials` asks and tells (one spawned process)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as the server runs: no line a trial
    study = optuna.load_study(study_name=study_name, storage=url, sampler=tpe_sampler(n_total))
    run = ClientRun()
    barrier.wait()
    run.started = time.time()
    for _ in range(n_trials):
        try:
            start = time.perf_counter()
            trial = study.ask()
            params = {f"x{i}": trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(N_PARAMS)}
            run.ask_s += time.perf_counter() - start
            value = sphere(params)
            start = time.perf_counter()
            study.tell(trial, value)
            run.tell_s += time.perf_counter() - start
        except Exception as e:
            run.errors.append(f"{type(e).__name__}: {e}")
            continue
        run.told += 1
        run.ended = time.time()
    queue.put(asdict(run))


@dataclass
class Throughput:
    trials: int
    wall_s: float
    retries: int
    resumed: int
    ask_ms: float  # mean, as a client waits for it
    tell_ms: float
    errors: list[str]
    check: str  # what the database says afterwards

    @property
    def per_s(self) -> float:
        return self.trials / self.wall_s if self.wall_s > 0 else 0.0


def summarize(runs: list[ClientRun], check: str) -> Throughput:
    told = [r for r in runs if r.told]
    wall = max(r.ended for r in told) - min(r.started for r in told) if told else 0.0
    trials = sum(r.told for r in runs)
    return Throughput(
        trials=trials, wall_s=wall, retries=sum(r.retries for r in runs),
        resumed=sum(r.resumed for r in runs),
        ask_ms=1000 * sum(r.ask_s for r in runs) / max(1, trials),
        tell_ms=1000 * sum(r.tell_s for r in runs) / max(1, trials),
        errors=[e for r in runs for e in r.errors], check=check,
    )


def measure_service(url: str, n_trials: int, tmp: Path) -> tuple[Throughput, list[str]]:
    # One API process per core: Optuna direct gets a process per client on the same cores.
    with serve(tmp, workers=0, database_url=url, api_workers=os.cpu_count() or 1) as server:
        job = server.client.submit(asktell_spec(n_trials))
        runs = run_processes(service_client, [(server.url, job.id, i) for i in range(CLIENTS)],
                             timeout_s=600 + n_trials)
        ended = server.client.get(job.id)
        check = (f"job {ended.status}, {ended.progress.complete} complete, "
                 f"{ended.progress.failed} failed, {ended.progress.retried} retried")
    return summarize(runs, check), log_problems(server.log)


def measure_direct(url: str, n_trials: int) -> Throughput:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_name = f"direct-{uuid.uuid4().hex[:8]}"
    optuna.create_study(storage=url, study_name=study_name, direction="minimize")
    share = [n_trials // CLIENTS + (i < n_trials % CLIENTS) for i in range(CLIENTS)]
    runs = run_processes(direct_client, [(url, study_name, k, n_trials) for k in share],
                         timeout_s=600 + n_trials)
    trials = optuna.load_study(study_name=study_name, storage=url).get_trials(deepcopy=False)
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    return summarize(runs, f"{complete} complete of {len(trials)} trials")


def part_asktell(sizes: Sizes) -> Section:
    n = sizes.asktell_trials
    with postgres_database() as url, tempfile.TemporaryDirectory() as tmp:
        service, problems = measure_service(url, n, Path(tmp))
        direct = measure_direct(url, n)
    ratio = service.per_s / direct.per_s if direct.per_s else 0.0
    lines = [
        f"{n} trials of one objective over {N_PARAMS} floats, TPE (the registry's `tpe`: "
        "multivariate, group, 5 random startup trials, no seed), a trivial objective computed "
        f"by the client; {CLIENTS} client processes released together, wall time from the "
        "first ask to the last tell. Both on one fresh PostgreSQL database. Mean ask and "
        "tell: as a client waits for them (the service's asks of one job wait in turn for "
        "its lock).",
        "",
        "| | trials | wall (s) | trials / s | mean ask (ms) | mean tell (ms) | 409 retries "
        "| errors | afterwards |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| service: REST ask/tell, {CLIENTS} SDK clients, "
        f"`serve --workers 0 --api-workers {os.cpu_count()}` | "
        f"{service.trials} | {service.wall_s:.2f} | {service.per_s:.1f} | "
        f"{service.ask_ms:.0f} | {service.tell_ms:.0f} | {service.retries} | "
        f"{len(service.errors)} | {service.check} |",
        f"| Optuna direct: `study.ask()` + `suggest_float`s / `study.tell()`, {CLIENTS} "
        f"processes | {direct.trials} | {direct.wall_s:.2f} | {direct.per_s:.1f} | "
        f"{direct.ask_ms:.0f} | {direct.tell_ms:.0f} | - | {len(direct.errors)} | "
        f"{direct.check} |",
        "",
        f"Ratio service / direct: **{ratio:.2f}** (target >= {TARGET_RATIO}: "
        f"{verdict(ratio >= TARGET_RATIO)}).",
        "",
        "What an ask costs the service beyond Optuna's own `study.ask()`: an HTTP round trip "
        "(JSON both ways, a bearer token), loading the job row, a per-job lock in the process "
        "and PostgreSQL's advisory lock (`pg_advisory_xact_lock`) around creating the trial, "
        "so that budget and parallelism hold across processes, the budget check, a look-up of "
        "the client's unfinished trial (idempotent asks), the heartbeat written at the ask and "
        "a system attribute naming the client. What it saves: the trial's parameters are "
        "stored in one transaction (Optuna direct commits each `suggest_float` on its own: 8 "
        "here), and a tell does not read the trial back twice. Sampling happens after the "
        "lock, one ask at a time per API process; Optuna direct samples in 8 processes at "
        "once.",
    ]
    if service.resumed:
        lines += ["", f"{service.resumed} asks gave back an unfinished trial (none expected)."]
    section = Section("Ask/tell throughput on PostgreSQL", lines,
                      [f"ask/tell ratio {ratio:.2f} >= {TARGET_RATIO}: "
                       f"{verdict(ratio >= TARGET_RATIO)}"])
    section.problems += [f"service client: {e}" for e in service.errors]
    section.problems += [f"optuna direct: {e}" for e in direct.errors]
    if problems:
        section.problems += ["service log:", *problems]
    return section


# --- part 2: parallel efficiency of workers --------------------------------------------------
def digits_spec(name: str, n_trials: int, epochs: int, parallelism: int) -> dict[str, Any]:
    # The architecture is fixed (only lr varies), so that every trial costs the same
    # and both runs do the same work whichever parameters each worker's sampler draws.
    return {
        "name": name, "seed": 0,
        "trainer": {"name": "image-classifier", "dataset": "digits", "epochs": epochs,
                    "options": {"threads": 1}},
        "space": {"name": "cnn", "params": [
            {"type": "fixed", "name": "depth", "value": 2},
            {"type": "fixed", "name": "width", "value": 16},
            {"type": "fixed", "name": "kernel_size", "value": 3},
        ]},
        "objectives": [{"name": "accuracy"}],
        "algorithm": {"sampler": "random"},
        "budget": {"n_trials": n_trials, "parallelism": parallelism},
    }


@dataclass
class WorkersRun:
    workers: int
    wall_s: float
    mean_trial_s: float
    joined: int  # workers that ran the job
    duplicates: int  # trials whose params another trial of the job had too
    problems: list[str]


def wait_for_workers(log: Path, workers: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while log.read_text(errors="replace").count(": watching ") < workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workers} workers did not start; see {log}")
        time.sleep(0.2)


def run_job(client: Client, spec: dict[str, Any]) -> tuple[float, str]:
    start = time.perf_counter()
    job = client.wait(client.submit(spec).id, poll_interval=0.1, timeout=3600)
    wall = time.perf_counter() - start
    if job.status != "succeeded":
        raise RuntimeError(f"job {spec['name']} {job.status}: {job.error}")
    return wall, job.id


def measure_workers(workers: int, sizes: Sizes, tmp: Path) -> WorkersRun:
    env = {"EDGETUNE_WORKER_TRIALS": "1", "EDGETUNE_POLL_INTERVAL_S": "0.2"}
    with serve(tmp, workers=workers, env=env, log_level="info") as server:
        wait_for_workers(server.log, workers)
        # Warm-up: each worker starts its fork server (torch preloaded) with its first trial.
        run_job(server.client, digits_spec("warm-up", 2 * workers, 1, workers))
        wall, job_id = run_job(server.client, digits_spec(
            f"digits-{workers}w", sizes.digits_trials, sizes.digits_epochs, parallelism=2))
        trials = server.client.trials(job_id, limit=100).data
    durations = [t.duration_s for t in trials if t.duration_s is not None]
    seen = [tuple(sorted(t.params.items())) for t in trials]
    joined = set(re.findall(rf"worker (\S+): running job {job_id}", server.log.read_text()))
    return WorkersRun(workers=workers, wall_s=wall,
                      mean_trial_s=sum(durations) / max(1, len(durations)), joined=len(joined),
                      duplicates=len(seen) - len(set(seen)),
                      problems=log_problems(server.log))


def part_workers(sizes: Sizes) -> Section:
    runs = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(measure_workers(workers, sizes, Path(tmp)))
    efficiency = runs[0].wall_s / runs[1].wall_s
    lines = [
        f"{sizes.digits_trials} trials of the digits job (image-classifier, the `cnn` space "
        "with its architecture fixed at depth 2, width 16, kernel 3, so every trial costs the "
        f"same; {sizes.digits_epochs} epochs, one thread per trial, accuracy, random sampler, "
        "seed 0), parallelism 2, on SQLite in a temp dir. `edgetune serve --workers N` with "
        "EDGETUNE_WORKER_TRIALS=1 (one trial per worker at a time) and "
        "EDGETUNE_POLL_INTERVAL_S=0.2; after a warm-up job, wall time from submission to "
        "`succeeded` as the SDK sees it (polling every 0.1 s).",
        "",
        "| workers | joined the job | wall (s) | mean trial duration (s) "
        "| trials with repeated params |",
        "|---:|---:|---:|---:|---:|",
        *(f"| {r.workers} | {r.joined} | {r.wall_s:.1f} | {r.mean_trial_s:.2f} | "
          f"{r.duplicates} |" for r in runs),
        "",
        f"Parallel efficiency wall(1) / wall(2): **{efficiency:.2f}x** (target >= "
        f"{TARGET_EFFICIENCY}: {verdict(efficiency >= TARGET_EFFICIENCY)}).",
    ]
    if runs[1].duplicates > runs[0].duplicates:
        lines += ["", "With 2 workers some trials repeat another trial's parameters: each "
                  "worker builds the job's seeded sampler itself, so both draw the same "
                  "sequence."]
    section = Section("Parallel efficiency of workers", lines,
                      [f"2-worker efficiency {efficiency:.2f}x >= {TARGET_EFFICIENCY}: "
                       f"{verdict(efficiency >= TARGET_EFFICIENCY)}"])
    for r in runs:
        if r.problems:
            section.problems += [f"server log, {r.workers} worker(s):", *r.problems]
    return section


# --- part 3: Ray per-trial overhead ----------------------------------------------------------


def ray_job_spec(n_trials: int, parallelism: int) -> Any:
    from edgetune.spec import JobSpec

    return JobSpec.model_validate({
        "name": "ray-overhead", "seed": 0,
        "trainer": {"name": "function", "dataset": "sphere", "epochs": 1},
        "space": {"name": None, "params": [
            {"type": "float", "name": f"x{i}", "low": 0, "high": 1} for i in range(4)
        ]},
        "objectives": [{"name": "f1"}],
        "algorithm": {"backend": "ray", "sampler": "random"},
        "budget": {"n_trials": n_trials, "parallelism": parallelism},
    })


def ray_backend_overhead(n_trials: int, parallelisms: list[int]) -> dict[str, Any]:
    """Our Ray backend in this process, as a worker runs it: seconds per trial by parallelism."""
    import ray

    from edgetune.devices import MeasureConfig
    from edgetune.search.backends import RunToEnd
    from edgetune.search.backends.ray import RayBackend
    from edgetune.storage import JobRepository, JobStatus, open_database

    with tempfile.TemporaryDirectory() as tmp:
        db = open_database(f"sqlite:///{tmp}/edgetune.db")
        jobs = JobRepository(db)
        backend = RayBackend(storage_url=db.url, artifact_dir=f"{tmp}/artifacts",
                             latency=MeasureConfig(min_repeats=1, min_time_s=0.0),
                             reuse_actors=True)

        def run(n: int, parallelism: int) -> float:
            spec = ray_job_spec(n, parallelism)
            jobs.create(spec)
            job = jobs.claim("bench", lease_s=3600)
            if job is None:
                raise RuntimeError("the job just created could not be claimed")
            start = time.perf_counter()
            outcome = backend.run(job, spec, RunToEnd())
            wall = time.perf_counter() - start
            if outcome.status != JobStatus.SUCCEEDED:
                raise RuntimeError(f"the ray job ended {outcome.status}: {outcome.error}")
            jobs.finish(job.id, "bench", outcome.status, None)
            return wall

        start = time.perf_counter()
        backend.connect()
        init_s = time.perf_counter() - start
        run(2, 1)  # warm-up: Ray's first worker processes
        per_trial = {p: run(n_trials, p) / n_trials for p in parallelisms}
        db.dispose()
    ray.shutdown()
    return {"init_s": init_s, "per_trial_s": per_trial}


def plain_tune_overhead(n_trials: int) -> dict[str, Any]:
    """Plain Ray Tune, defaults everywhere but where results go: seconds per trial."""
    import ray
    from ray import tune

    start = time.perf_counter()
    ray.init()
    init_s = time.perf_counter() - start
    def trivial_trainable(config: dict[str, float]) -> None:
        # Nested and self-contained: Ray pickles it by value, while a function of this
        # script's module, `__mp_main__` in a spawned process, no Ray worker could import.
        tune.report({"f1": sum((v - 0.5) ** 2 for v in config.values())})

    with tempfile.TemporaryDirectory() as tmp:

        def fit(n: int) -> float:
            tuner = tune.Tuner(
                trivial_trainable,
                param_space={f"x{i}": tune.uniform(0.0, 1.0) for i in range(4)},
                tune_config=tune.TuneConfig(num_samples=n),
                run_config=tune.RunConfig(storage_path=tmp),
            )
            start = time.perf_counter()
            results = tuner.fit()
            wall = time.perf_counter() - start
            if results.num_errors:
                raise RuntimeError(f"{results.num_errors} Ray Tune trials failed")
            return wall

        fit(2)  # warm-up, as on our side
        per_trial = fit(n_trials) / n_trials
    ray.shutdown()
    return {"init_s": init_s, "per_trial_s": per_trial}


def part_ray(sizes: Sizes) -> Section:
    n = sizes.ray_trials
    cpus = os.cpu_count() or 1
    parallelisms = sorted({1, cpus})
    with tempfile.TemporaryDirectory() as tmp:
        ours = spawned(ray_backend_overhead, n, parallelisms, log=Path(tmp) / "ours.log",
                       timeout_s=900 + 10 * n)
        plain = spawned(plain_tune_overhead, n, log=Path(tmp) / "plain.log",
                        timeout_s=900 + 10 * n)
    ours_same = ours["per_trial_s"][cpus]
    lines = [
        f"{n} trivial trials (microseconds of work, one reported result) each, after a "
        "2-trial warm-up, each side in its own fresh process with its own local Ray; seconds "
        "of wall time per trial, the run's start to its end; `ray.init` timed apart. Plain "
        f"Ray Tune runs as many trials at once as there are CPUs ({cpus}), one CPU each, so "
        "the comparison is with our backend at that parallelism.",
        "",
        "| | parallelism | s / trial | `ray.init` (s) |",
        "|---|---:|---:|---:|",
        *(f"| edgetune ray backend, actors reused, `function` trainer | {p} | {s:.3f} | "
          f"{ours['init_s']:.1f} |" for p, s in ours["per_trial_s"].items()),
        f"| plain Ray Tune: `Tuner(trainable, TuneConfig(num_samples={n}))` | {cpus} "
        f"(default) | {plain['per_trial_s']:.3f} | {plain['init_s']:.1f} |",
        "",
        f"Our backend at parallelism {cpus}: **{ours_same:.3f} s per trial** (target <= "
        f"{TARGET_RAY_S} s: {verdict(ours_same <= TARGET_RAY_S)}); plain Ray Tune: "
        f"{plain['per_trial_s']:.3f} s. Plain Ray Tune writes its results to a temp dir "
        "(`RunConfig(storage_path=...)`), not `~/ray_results`; nothing else is set.",
    ]
    return Section("Ray per-trial overhead", lines,
                   [f"ray backend {ours_same:.3f} s/trial <= {TARGET_RAY_S}: "
                    f"{verdict(ours_same <= TARGET_RAY_S)}"])


# --- the report ------------------------------------------------------------------------------
def machine() -> str:
    return (f"{platform.platform()}, {os.cpu_count()} CPU cores, Python "
            f"{platform.python_version()}, PostgreSQL {postgres_version()}")


def report(sections: list[Section], command: str, quick: bool) -> str:
    lines = [
        "# Throughput: ask/tell, workers, Ray",
        "",
        f"`{command}` on {machine()}.",
    ]
    if quick:
        lines += ["", "A `--quick` smoke run: sizes too small for the figures to mean much."]
    for section in sections:
        lines += ["", f"## {section.title}", "", *section.lines]
    lines += ["", "## Targets", "", *(f"- {v}" for s in sections for v in s.verdicts)]
    problems = [p for s in sections for p in s.problems]
    if problems:
        lines += ["", "## Errors seen", "", "```", *problems, "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    use_token()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where the report goes (default {OUT}; a quick run only prints)")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := sorted(set(parts) - set(PARTS)):
        parser.error(f"unknown parts: {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    sizes = QUICK if args.quick else FULL
    runners: dict[str, Callable[[Sizes], Section]] = {
        "asktell": part_asktell, "workers": part_workers, "ray": part_ray,
    }
    sections = []
    for part in PARTS:
        if part in parts:
            start = time.perf_counter()
            sections.append(runners[part](sizes))
            print(f"[{part} took {time.perf_counter() - start:.0f} s]", file=sys.stderr)
    command = shlex.join(["python", "benchmarks/throughput.py", *sys.argv[1:]])
    text = report(sections, command, args.quick)
    out = args.out or (None if args.quick else OUT)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
