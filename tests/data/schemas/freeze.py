"""Freeze a database of the current schema as test data: `python tests/data/schemas/freeze.py`.

Writes `edgetune-<head revision>.sqlite` beside this script, filled through the real code (the
job repository, Optuna), so that tests/storage_tests/test_migrations.py can check that every
released schema upgrades to head with its data intact. A released schema's data never changes:
the script refuses to overwrite a frozen file unless `--force` (for a revision not yet released).

test_migrations.py reads back what this script writes, from every frozen file, old and new:
keep writing the same jobs and trials; add new data beside them, never change or drop any.
From schema 0003 on it also writes a device and its probes, one in each state.

It freezes the schema of the edgetune it imports. To freeze a released revision while the
working tree already holds a newer one, run it with that release's code first on the path:
`git archive <commit> edgetune | tar -x -C /tmp/old && PYTHONPATH=/tmp/old python <this script>`.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from edgetune.search import validate_job_spec
from edgetune.search.backends.optuna import load_job_study
from edgetune.search.space import suggest
from edgetune.spaces import resolve_space
from edgetune.spec import JobSpec
from edgetune.storage import (
    Database,
    Job,
    JobRepository,
    JobStatus,
    open_database,
    optuna_storage,
)
from edgetune.storage.migrations import current_revision, head_revision

HERE = Path(__file__).parent

#: The demo's 3-objective NAS search with a latency constraint; it runs and succeeds here.
FINISHED = JobSpec.model_validate({
    "name": "digits-nas",
    "trainer": {"name": "image-classifier", "dataset": "digits", "epochs": 3, "batch_size": 64},
    "space": {"name": "cnn"},
    "objectives": [{"name": "accuracy"}, {"name": "latency_ms", "device": "local"},
                   {"name": "size_bytes"}],
    "constraints": [{"metric": "latency_ms", "op": "<=", "bound": 5.0}],
    "algorithm": {"backend": "optuna", "sampler": "nsga2", "pruner": "mo-asha"},
    "budget": {"n_trials": 12, "parallelism": 2},
    "seed": 7,
})
#: Cancelled before it started.
CANCELLED = JobSpec.model_validate({
    "name": "digits-tpe",
    "objectives": [{"name": "accuracy"}],
    "algorithm": {"sampler": "tpe", "pruner": "median"},
    "budget": {"n_trials": 30, "timeout_s": 3600},
})
#: A ZDT1 search on the ray backend, still waiting for a worker.
QUEUED = JobSpec.model_validate({
    "name": "zdt1-ray",
    "trainer": {"name": "function", "dataset": "zdt1", "epochs": 4},
    "space": {"name": None, "params": [
        {"name": f"x{i}", "type": "float", "low": 0.0, "high": 1.0} for i in range(4)
    ]},
    "objectives": [{"name": "f1"}, {"name": "f2"}],
    "algorithm": {"backend": "ray", "sampler": "nsga2"},
    "budget": {"n_trials": 40, "timeout_s": 600, "parallelism": 4},
    "seed": 3,
})


def freeze(path: Path) -> None:
    """Fill a new SQLite database at `path` and fold it into that one file."""
    for spec in (FINISHED, CANCELLED, QUEUED):
        validate_job_spec(spec)  # only specs the service accepts
    db = open_database(f"sqlite:///{path}")
    try:
        jobs = JobRepository(db)
        finished = jobs.create(FINISHED)
        jobs.request_cancel(jobs.create(CANCELLED).id)
        jobs.create(QUEUED)
        claimed = jobs.claim("freeze-worker", lease_s=60)
        assert claimed is not None and claimed.id == finished.id
        _run_trials(db.url, finished)
        jobs.finish(finished.id, "freeze-worker", JobStatus.SUCCEEDED)
        if int(head_revision()) >= 3:  # devices and probes exist from schema 0003 on
            _fill_probe_queue(db)
        assert current_revision(db.engine) == head_revision()
    finally:
        optuna_storage(db.url).engine.dispose()
        db.dispose()
    # One self-contained file: the WAL folded in and gone, free pages dropped.
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("VACUUM")
    finally:
        conn.close()


def _run_trials(url: str, job: Job) -> None:
    """A complete trial with what a trial measures, a pruned and a failed one, as a worker would:
    the job's study with its sampler (NSGA-II, which stores each trial's constraint violations),
    the space sampled by `suggest`; the params are enqueued so that every freeze writes the same.
    """
    params = resolve_space(FINISHED.space.name, FINISHED.space.params)
    with warnings.catch_warnings():  # Optuna 5 deprecates `constraints_func`; the registry uses it
        warnings.simplefilter("ignore", FutureWarning)
        study = load_job_study(job, FINISHED, params, url)

    def ask(depth: int, width: int, kernel_size: int, lr: float) -> optuna.Trial:
        study.enqueue_trial({"depth": depth, "width": width, "kernel_size": kernel_size,
                             "lr": lr})
        trial = study.ask()
        suggest(trial, params)
        return trial

    complete = ask(2, 16, 3, 0.01)
    metrics = {"accuracy": 0.95, "latency_ms@local": 1.25, "size_bytes": 48_200.0,
               "params": 11_850.0, "flops": 92_000.0}
    attrs = {
        "artifact": {"sha256": "0" * 63 + "1", "format": "onnx", "size_bytes": 48_200},
        "compression": {"quantization": "fp32", "prune": "none"},
        "torch_accuracy": 0.9472,
        "val_accuracy_history": [0.81, 0.92, 0.95],
        "latency@local": {"runtime": "onnxruntime", "threads": 1, "batch_size": 1,
                          "p50_ms": 1.25, "p90_ms": 1.5, "mean_ms": 1.3, "std_ms": 0.1,
                          "n": 200},
        "pid": 4242,
    }
    for key, value in {**metrics, **attrs}.items():
        complete.set_user_attr(key, value)
    study.tell(complete, [metrics[key] for key in FINISHED.metric_names])

    pruned = ask(1, 8, 5, 0.001)
    pruned.set_user_attr("accuracy", 0.42)
    pruned.set_user_attr("pruned_at_epoch", 1)
    pruned.set_user_attr("val_accuracy_history", [0.31, 0.42])
    study.tell(pruned, state=TrialState.PRUNED)

    failed = ask(3, 48, 5, 0.03)
    failed.set_user_attr("error", "the trial's process was killed by SIGKILL before reporting")
    study.tell(failed, state=TrialState.FAIL)


def _fill_probe_queue(db: Database) -> None:
    """A registered device and a probe in each state: done (with what an agent reports), failed
    (with its reason), leased to an agent, pending. Imported here: older releases lack them."""
    from edgetune.storage import DeviceRepository, ProbeRepository

    device = DeviceRepository(db).register(
        "pixel-7", runtimes=["onnxruntime", "torchscript"], threads=4,
        hardware={"cpu": "Google Tensor G2", "cores": 8, "memory_bytes": 8 << 30,
                  "accelerator": None, "versions": {"onnxruntime": "1.20.0"}},
    )
    probes = ProbeRepository(db)
    config = {"runtime": "onnxruntime", "input_shape": [1, 8, 8], "batch_size": 1, "threads": 4,
              "warmup": 10, "min_repeats": 50, "min_time_s": 0.5}
    done, failed, leased, pending = (
        probes.request(device.id, artifact_sha256=f"{i:064x}", **config) for i in range(1, 5)
    )
    for probe in (done, failed, leased):  # leased oldest first
        taken = probes.lease(device.id, "freeze-agent", lease_s=3600)
        assert taken is not None and taken.id == probe.id
    probes.complete(done.id, "freeze-agent", {
        "p50_ms": 1.25, "p90_ms": 1.5, "mean_ms": 1.3, "std_ms": 0.1, "n": 200,
        "threads": 4, "runtime_version": "1.20.0",
    })
    probes.fail(failed.id, "freeze-agent", "onnxruntime could not load the model: INVALID_GRAPH")
    assert probes.get(pending.id).status == "pending"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--force", action="store_true",
                        help="overwrite the frozen file (of a revision not yet released)")
    args = parser.parse_args(argv)
    target = HERE / f"edgetune-{head_revision()}.sqlite"
    if target.exists() and not args.force:
        print(f"{target} exists, and a released schema's data never changes "
              "(--force to overwrite it)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / target.name
        freeze(path)
        for leftover in (Path(f"{target}-wal"), Path(f"{target}-shm")):
            leftover.unlink(missing_ok=True)  # of an old file opened in place; never to be mixed in
        target.write_bytes(path.read_bytes())
    print(f"wrote {target} ({target.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
