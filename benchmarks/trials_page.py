"""GET /jobs/{id}/trials against a real server while its study grows (issue 15, item 10).

Run: python benchmarks/trials_page.py [--postgres] [--before REF]
  ->  benchmarks/results/trials_page.md

One ask-tell job (two objectives, three parameters) is submitted through the API; its study is
then filled with completed trials built by Optuna (see `fill`), to 1,000 and then 10,000
trials. At each size three pages are timed, REQUESTS times each, over one keep-alive
connection: the first 100 trials, the first one, and the last 100 (offset N-100).

`--postgres` runs the same on a fresh PostgreSQL database at 127.0.0.1:5432 (created with
CREATE DATABASE on `test` as user `postgres`, dropped at the end). `--before REF` also runs the
SQLite case on the code of git revision REF (e.g. `c2add5f^`, before the SQL paging), with
BEFORE_REQUESTS requests per page since each one then reads the whole study.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from _token import use_token, wait_until_healthy

from edgetune.cli import free_port

OUT = Path(__file__).parent / "results" / "trials_page.md"
ROOT = Path(__file__).resolve().parent.parent
SIZES = (1_000, 10_000)
REQUESTS = 30
BEFORE_REQUESTS = 5
BATCH = 1_000
ADDED = 100
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"

JOB = {
    "name": "trials-page", "mode": "ask-tell", "seed": 0,
    "space": {"name": None, "params": [
        {"type": "float", "name": "lr", "low": 1e-5, "high": 1e-1, "log": True},
        {"type": "int", "name": "width", "low": 8, "high": 512},
        {"type": "categorical", "name": "act", "choices": ["relu", "gelu", "silu"]},
    ]},
    "objectives": [{"name": "accuracy"}, {"name": "latency_ms"}],
    "algorithm": {"sampler": "random"},
    "budget": {"n_trials": 100_000, "parallelism": 1},
}

#: Installed as the server's `sitecustomize`: logs the duration of each of its full (generation
#: 2) garbage collections, which stop every request in the process while they run.
GC_PROBE = """\
import gc, os, time
_log = open(os.environ["TRIALS_PAGE_GC_LOG"], "a", buffering=1)
_start = [0.0]
def _probe(phase, info):
    if info["generation"] == 2:
        if phase == "start":
            _start[0] = time.perf_counter()
        else:
            _log.write(f"{(time.perf_counter() - _start[0]) * 1000:.1f}\\n")
gc.callbacks.append(_probe)
"""


def pages(n: int) -> list[tuple[str, dict[str, int]]]:
    return [("limit=100", {"limit": 100}), ("limit=1", {"limit": 1}),
            ("limit=100&offset=N-100", {"limit": 100, "offset": n - 100})]


@contextmanager
def server(database_url: str, data_dir: str, code: Path,
           gc_log: Path) -> Iterator[httpx.Client]:
    """`edgetune serve` of the code in `code` on `database_url`, no workers, its full garbage
    collections logged to `gc_log`; a client with the admin token."""
    port = free_port()
    probe = Path(data_dir) / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(GC_PROBE)
    env = {**os.environ, "PYTHONPATH": f"{probe}{os.pathsep}{code}",
           "TRIALS_PAGE_GC_LOG": str(gc_log)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetune", "serve", "--port", str(port), "--data-dir", data_dir,
         "--database-url", database_url, "--workers", "0", "--log-level", "warning"],
        env=env, cwd=code)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                        headers={"Authorization": f"Bearer {os.environ['EDGETUNE_TOKEN']}"})
    try:
        wait_until_healthy(http, proc)
        yield http
    finally:
        http.close()
        proc.terminate()
        proc.wait(timeout=60)


def new_trials(n: int, rng: random.Random) -> list[Any]:
    """`n` completed trials as a worker leaves them, built by Optuna (`create_trial`):
    parameters, the two objectives' values and four metrics in user attributes."""
    import optuna
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    dists = {"lr": FloatDistribution(1e-5, 1e-1, log=True), "width": IntDistribution(8, 512),
             "act": CategoricalDistribution(["relu", "gelu", "silu"])}
    out = []
    for _ in range(n):
        accuracy, latency = rng.uniform(0.5, 0.99), rng.uniform(0.5, 50.0)
        out.append(optuna.trial.create_trial(
            params={"lr": 10 ** rng.uniform(-5, -1), "width": rng.randint(8, 512),
                    "act": rng.choice(["relu", "gelu", "silu"])},
            distributions=dists, values=[accuracy, latency],
            user_attrs={"accuracy": accuracy, "latency_ms@local": latency,
                        "size_bytes": rng.randint(10_000, 10_000_000),
                        "params": rng.randint(1_000, 2_000_000)}))
    return out


def fill(study: Any, storage: Any, start: int, stop: int, rng: random.Random) -> None:
    """Add trials `start` .. `stop - 1` to the study. The first ADDED go through
    `study.add_trials`; the rest, in batches, are written straight into Optuna's tables with
    Optuna's table models and encodings (`add_trials` writes one trial per transaction, 100 a
    second on this machine), then a sample is read back through Optuna and compared with
    what was written."""
    added = max(0, min(stop, ADDED) - start)
    if added:
        study.add_trials(new_trials(added, rng))
    for first in range(start + added, stop, BATCH):
        batch = new_trials(min(BATCH, stop - first), rng)
        insert_trials(storage, study._study_id, first, batch)
        for k in (0, len(batch) - 1):
            got = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(
                study._study_id, first + k))
            want = batch[k]
            if (got.state, got.params, got.values, got.user_attrs, got.distributions) != (
                    want.state, want.params, want.values, want.user_attrs, want.distributions):
                raise RuntimeError(f"trial {first + k} reads back as {got}, written {want}")


def insert_trials(storage: Any, study_id: int, first: int, trials: list[Any]) -> None:
    """Write `trials` as numbers `first`... of the study in one transaction, as Optuna's
    `_get_prepared_new_trial` would write each one."""
    import json

    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models
    from sqlalchemy import insert, select

    table = models.TrialModel.__table__
    with storage.engine.begin() as conn:
        conn.execute(insert(table), [
            {"number": first + i, "study_id": study_id, "state": t.state,
             "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete}
            for i, t in enumerate(trials)])
        ids = dict(conn.execute(select(table.c.number, table.c.trial_id).where(
            table.c.study_id == study_id, table.c.number >= first)).all())
        conn.execute(insert(models.TrialParamModel.__table__), [
            {"trial_id": ids[first + i], "param_name": name,
             "param_value": t.distributions[name].to_internal_repr(value),
             "distribution_json": distribution_to_json(t.distributions[name])}
            for i, t in enumerate(trials) for name, value in t.params.items()])
        conn.execute(insert(models.TrialValueModel.__table__), [
            {"trial_id": ids[first + i], "objective": objective,
             "value": models.TrialValueModel.value_to_stored_repr(value)[0],
             "value_type": models.TrialValueModel.value_to_stored_repr(value)[1]}
            for i, t in enumerate(trials) for objective, value in enumerate(t.values)])
        conn.execute(insert(models.TrialUserAttributeModel.__table__), [
            {"trial_id": ids[first + i], "key": key, "value_json": json.dumps(value)}
            for i, t in enumerate(trials) for key, value in t.user_attrs.items()])


def timed(http: httpx.Client, path: str, query: dict[str, int], n: int,
          expect: tuple[int, int], gc_log: Path) -> tuple[float, float, list[float]]:
    """p50 and p90 in ms of `n` requests (after 2 unmeasured), checking the page's size and
    the study's count, and the server's full garbage collections (ms each) meanwhile."""
    times: list[float] = []
    collections = 0
    for i in range(n + 2):
        if i == 2:
            collections = len(gc_log.read_text().split())
        start = time.perf_counter()
        response = http.get(path, params=query)
        elapsed = (time.perf_counter() - start) * 1000
        response.raise_for_status()
        body = response.json()
        if (body["count"], len(body["data"])) != expect:
            raise RuntimeError(f"{path}?{query}: count {body['count']}, {len(body['data'])} "
                               f"trials; expected {expect}")
        if i >= 2:
            times.append(elapsed)
    deciles = statistics.quantiles(times, n=10, method="inclusive")
    gcs = [float(ms) for ms in gc_log.read_text().split()[collections:]]
    return statistics.median(times), deciles[8], gcs


def run_case(database_url: str, code: Path, n_requests: int) -> dict[tuple[int, str], Any]:
    """The timings on a server of the code in `code` (see `run_on`)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out: dict[tuple[int, str], Any] = {}
    with tempfile.TemporaryDirectory() as data_dir:
        gc_log = Path(data_dir) / "gc.log"
        gc_log.touch()
        with server(database_url, data_dir, code, gc_log) as http:
            run_on(http, database_url, n_requests, gc_log, out)
    return out


def run_on(http: httpx.Client, database_url: str, n_requests: int, gc_log: Path,
           out: dict[tuple[int, str], Any]) -> None:
    """Submit the job on the server, then fill its study to each size and time the pages."""
    import optuna

    job = http.post("/api/v1/jobs", json=JOB)
    job.raise_for_status()
    job_id, study_name = job.json()["id"], job.json()["study_name"]
    url = database_url.replace("postgresql://", "postgresql+psycopg://")
    storage = optuna.storages.RDBStorage(url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE,
                            optuna.study.StudyDirection.MINIMIZE] \
            or study.metric_names != ["accuracy", "latency_ms@local"]:
        raise RuntimeError(f"the job's study has {study.directions}, {study.metric_names}")
    rng, have = random.Random(0), 0
    for n in SIZES:
        start = time.perf_counter()
        fill(study, storage, have, n, rng)
        out[(n, "fill_s")], have = time.perf_counter() - start, n
        for label, query in pages(n):
            out[(n, label)] = timed(http, f"/api/v1/jobs/{job_id}/trials", query,
                                    n_requests, (n, query["limit"]), gc_log)
    storage.engine.dispose()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    import psycopg

    name = f"edgetune_bench_trials_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """The tree of git revision `ref`, extracted into a temporary directory."""
    with tempfile.TemporaryDirectory() as tree:
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        yield Path(tree)


def collections(gcs: list[float]) -> str:
    return f"{len(gcs)} x {statistics.median(gcs):.0f} ms" if gcs else "0"


def sqlite_url(data_dir: str) -> str:
    return f"sqlite:///{Path(data_dir) / 'trials.db'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL")
    parser.add_argument("--before", metavar="REF", help="also the SQLite case on git revision REF")
    args = parser.parse_args()
    use_token()
    started = time.perf_counter()
    cases: dict[str, dict[tuple[int, str], Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cases["SQLite"] = run_case(sqlite_url(tmp), ROOT, REQUESTS)
    if args.postgres:
        with postgres_database() as url:
            cases["PostgreSQL"] = run_case(url, ROOT, REQUESTS)
    if args.before:
        with checkout(args.before) as tree, tempfile.TemporaryDirectory() as tmp:
            cases[f"SQLite, before ({args.before})"] = run_case(sqlite_url(tmp), tree,
                                                                BEFORE_REQUESTS)
    write(cases, args, time.perf_counter() - started)


def write(cases: dict[str, dict[tuple[int, str], Any]], args: argparse.Namespace,
          total_s: float) -> None:
    command = "python benchmarks/trials_page.py" + (" --postgres" if args.postgres else "") + (
        f" --before '{args.before}'" if args.before else "")
    small, large = SIZES
    lines = [
        "# GET /jobs/{id}/trials as the study grows (issue 15, item 10)",
        "",
        f"`{command}` on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared with other work), Python {platform.python_version()}; one API process "
        f"(`edgetune serve --workers 0`), one keep-alive client; {total_s:.0f} s in all.",
        "",
        "One ask-tell job (objectives accuracy and latency_ms, three parameters) submitted through "
        "the API; its study filled with completed trials built by Optuna (`create_trial`), each "
        "with its parameters, two values and four metrics in user attributes. p50 / p90 of "
        f"{REQUESTS} requests per page (after 2 unmeasured), in ms; `count` and the page size "
        "checked on every answer.",
        "",
        f"| database | page | {small:,} trials p50 / p90 | {large:,} trials p50 / p90 | "
        f"server's full GCs meanwhile, {small:,} / {large:,} |",
        "|---|---|---|---|---|",
    ]
    for name, r in cases.items():
        for label, _ in pages(small):
            a, b = r[(small, label)], r[(large, label)]
            lines.append(f"| {name} | `{label}` | {a[0]:.1f} / {a[1]:.1f} | "
                         f"{b[0]:.1f} / {b[1]:.1f} | {collections(a[2])} / {collections(b[2])} |")
    fills = "; ".join(
        f"{name} {r[(small, 'fill_s')]:.0f} s to {small:,}, {r[(large, 'fill_s')]:.0f} s more "
        f"to {large:,}" for name, r in cases.items())
    lines += ["", f"Filling the study (the first {ADDED} trials by `study.add_trials`, the rest "
              f"in batches of {BATCH:,} written with Optuna's table models, a sample read "
              f"back through Optuna): {fills}."]
    lines += ["", "The server's full (generation 2) garbage collections are counted by a "
              "`gc.callbacks` probe installed as its `sitecustomize`: each one stops every "
              "request in the process while it runs (shown as: how many during the page's "
              "timed requests, x their median ms). About one 100-trial page in eight "
              "meets one, which is what sets those pages' p90; `limit=1` pages allocate too "
              "little to set one off."]
    if any("before" in name for name in cases):
        lines += ["", f"The `before` rows ran {BEFORE_REQUESTS} requests per page: each one "
                  "read and built every trial of the study."]
    lines += [
        "",
        "Before (issue 15): every request built every trial of the study, 0.3 s at 1k trials "
        "and 2 s at 5k, even with `limit=1`. Target: ≤ 50 ms and flat in the study's size.",
        "",
    ]
    OUT.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
