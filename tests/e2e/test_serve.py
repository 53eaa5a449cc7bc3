"""End to end: a real `edgetune serve` process, jobs submitted through the SDK."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import httpx
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from specs import SMALL_SUPERNET

from edgetune.cli import free_port
from edgetune.client import Client

pytestmark = pytest.mark.slow

THREE_OBJECTIVES = {
    "name": "e2e-three",
    "trainer": {"name": "image-classifier", "dataset": "digits", "epochs": 1},
    "space": {"name": "cnn"},
    "objectives": [
        {"name": "accuracy", "direction": "maximize"},
        {"name": "latency_ms", "device": "local"},
        {"name": "size_bytes"},
    ],
    "algorithm": {"sampler": "nsga2", "pruner": "none"},
    "budget": {"n_trials": 6, "parallelism": 2},  # 6 complete: the paging below needs 5
    "seed": 1,
}


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def test_three_objective_job_end_to_end(server) -> None:
    with Client(server.url) as client:
        job = client.submit(THREE_OBJECTIVES)
        assert job.status == "queued"
        seen: list[str] = []
        job = client.wait(job.id, timeout=400, poll_interval=0.5,
                          progress=lambda j: seen.append(j.status))
        assert job.status == "succeeded", f"{job.error}\n{server.log_tail()}"
        assert "running" in seen
        assert job.progress.complete + job.progress.pruned == 6
        assert job.progress.failed == 0

        trials = client.trials(job.id).data
        assert len(trials) == 6
        assert all(t.state in ("complete", "pruned") for t in trials)
        complete = [t for t in trials if t.state == "complete"]
        keys = ["accuracy", "latency_ms@local", "size_bytes"]
        for t in complete:
            assert t.values is not None and set(t.values) == set(keys)
            assert 0 <= t.values["accuracy"] <= 1
            assert t.values["latency_ms@local"] > 0
            assert t.values["size_bytes"] > 0
            assert t.metrics["params"] > 0
            assert len(t.user_attrs["artifact"]["sha256"]) == 64
            assert (server.data_dir / "artifacts").is_dir()

        front = client.pareto(job.id)
        assert front.front_size == len(front.data) >= 1
        assert [o.name for o in front.objectives] == keys
        lower_better = {
            t.number: [-t.values["accuracy"], t.values["latency_ms@local"], t.values["size_bytes"]]
            for t in complete
            if t.values is not None
        }
        front_numbers = {t.number for t in front.data}
        for t in front.data:
            assert set(t.values) == set(keys) and t.rank == 0
            assert not any(dominates(other, lower_better[t.number])
                           for other in lower_better.values())
        # Every trial left out is dominated by one on the front.
        for number, values in lower_better.items():
            if number not in front_numbers:
                assert any(dominates(lower_better[n], values) for n in front_numbers)

        everything = client.pareto(job.id, include_dominated=True)
        assert len(everything.data) == everything.count == len(complete)
        assert sum(t.knee for t in front.data) == 1
        assert set(front.reference_point) == set(keys)
        assert front.hypervolume is not None and front.hypervolume > 0
        assert all(t.hv_contribution is not None and t.hv_contribution >= 0
                   for t in front.data if t.feasible)
        page = client.pareto(job.id, include_dominated=True, offset=2, limit=3)
        assert [t.number for t in page.data] == [t.number for t in everything.data[2:5]]

        history = client.hypervolume(job.id).data
        assert [h.trial_number for h in history] == sorted(
            (t.number for t in complete), key=lambda n: next(
                c.finished_at for c in complete if c.number == n))
        volumes = [h.hypervolume for h in history]
        assert volumes == sorted(volumes)  # a front only grows
        assert volumes[-1] == pytest.approx(front.hypervolume)

        best = front.data[0]
        path = client.download_artifact(job.id, best.number, server.data_dir / "best.onnx")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == next(
            t.user_attrs["artifact"]["sha256"] for t in complete if t.number == best.number)
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {session.get_inputs()[0].name:
                                    np.zeros((1, 1, 8, 8), np.float32)})
        assert out.shape == (1, 10)

    study = optuna.load_study(study_name=job.study_name, storage=server.database_url)
    assert study.metric_names == keys
    loaded = study.get_trials(deepcopy=False)
    assert len(loaded) == 6
    assert {t.number: t.state for t in loaded} == {
        t.number: TrialState[t.state.upper()] for t in trials
    }
    # The API lists fixed parameters (the space's `arch`) too; Optuna records searched ones.
    searched = {t.number: {k: v for k, v in t.params.items() if k != "arch"} for t in trials}
    assert {t.number: t.params for t in loaded} == searched
    assert all(t.params["arch"] == "cnn" for t in trials)

    check_dashboard_reads(server, job.study_name, keys, n_trials=6)


def check_dashboard_reads(server, study_name: str, keys: list[str], *, n_trials: int) -> None:
    """`edgetune dashboard` serves the same study through optuna-dashboard's own API."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "edgetune", "dashboard", "--data-dir", str(server.data_dir),
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 60
        summaries = None
        while time.monotonic() < deadline and summaries is None:
            try:
                summaries = httpx.get(f"{base}/studies", timeout=5).json()["study_summaries"]
            except httpx.HTTPError:
                time.sleep(0.3)
        assert summaries is not None, "optuna-dashboard did not answer"
        (summary,) = [s for s in summaries if s["study_name"] == study_name]
        detail = httpx.get(f"{base}/studies/{summary['study_id']}", params={"after": 0},
                           timeout=10).json()
        assert detail["objective_names"] == keys
        assert len(detail["trials"]) == n_trials
        assert {a["key"] for a in detail["union_user_attrs"]} >= {"size_bytes", "params"}
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_job_whose_trials_all_fail_ends_failed_with_reason(server, tmp_path) -> None:
    spec = {
        "name": "e2e-fails",
        "trainer": {"dataset": "mnist", "epochs": 1},  # the server's data dir has no MNIST
        "objectives": [{"name": "accuracy"}],
        "algorithm": {"sampler": "random"},
        "budget": {"n_trials": 40},
    }
    with Client(server.url) as client:
        job = client.wait(client.submit(spec).id, timeout=300, poll_interval=0.5)
        assert job.status == "failed"
        assert job.error is not None and "MNIST files not found" in job.error
        assert "stopped early" in job.error
        assert job.progress.failed == 5  # not the whole budget of 40
        trials = client.trials(job.id).data
        assert all(t.state == "fail" and "MNIST" in (t.error or "") for t in trials)


def test_cancel_stops_a_running_job(server) -> None:
    spec = {
        "name": "e2e-cancel",
        "trainer": {"epochs": 30},
        "objectives": [{"name": "accuracy"}],
        "algorithm": {"sampler": "random"},
        "budget": {"n_trials": 100},
    }
    with Client(server.url) as client:
        job = client.submit(spec)
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            job = client.get(job.id)
            if job.status == "running" and job.progress.running >= 1:
                break
            time.sleep(0.3)
        assert job.status == "running", server.log_tail()
        client.cancel(job.id)
        job = client.wait(job.id, timeout=60, poll_interval=0.3)
        assert job.status == "cancelled"
        assert job.progress.running == 0
        assert job.progress.finished < 100


def test_events_stream_a_running_job_to_a_real_http_client(server) -> None:
    spec = {**THREE_OBJECTIVES, "name": "e2e-events", "budget": {"n_trials": 4},
            "trainer": {"epochs": 1}}
    with Client(server.url) as client:
        job = client.submit(spec)
        events = list(client.events(job.id, interval_s=0.2))
    names = [name for name, _ in events]
    assert names[-1] == "end" and events[-1][1]["status"] == "succeeded"
    trials = [data for name, data in events if name == "trial"]
    assert sorted(t["number"] for t in trials) == [0, 1, 2, 3]
    assert all(set(t["values"]) == {"accuracy", "latency_ms@local", "size_bytes"}
               for t in trials if t["state"] == "complete")
    progress = [data for name, data in events if name == "progress"]
    assert progress[0]["status"] in ("queued", "running")
    assert any(p["running"] >= 1 for p in progress)  # seen while it ran, not only at the end
    fronts = [data for name, data in events if name == "front"]
    assert fronts and fronts[-1]["trials"] and fronts[-1]["hypervolume"] > 0


def test_watch_and_plot_commands_against_the_server(server, tmp_path) -> None:
    spec = {**THREE_OBJECTIVES, "name": "e2e-cli", "budget": {"n_trials": 3},
            "trainer": {"epochs": 1}}
    with Client(server.url) as client:
        job = client.submit(spec)
    cli = [sys.executable, "-m", "edgetune"]
    watched = subprocess.run([*cli, "watch", job.id, "--server", server.url],
                             capture_output=True, text=True, timeout=300)
    assert watched.returncode == 0, watched.stderr
    assert "succeeded" in watched.stdout and "Pareto front" in watched.stdout
    assert "hypervolume" in watched.stdout
    png = tmp_path / "front.png"
    plotted = subprocess.run([*cli, "pareto", job.id, "--server", server.url, "--plot",
                              str(png)], capture_output=True, text=True, timeout=120)
    assert plotted.returncode == 0, plotted.stderr
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert png.stat().st_size > 5_000 and image.shape[0] > 100 and image.shape[1] > 100
    report = tmp_path / "report.html"
    reported = subprocess.run([*cli, "report", job.id, "--server", server.url, "--out",
                               str(report)], capture_output=True, text=True, timeout=120)
    assert reported.returncode == 0, reported.stderr
    assert "<svg" in report.read_text()


def test_one_shot_jobs_evaluate_subnets_train_finalists_and_share_the_supernet(server) -> None:
    spec = {
        "name": "e2e-one-shot", "seed": 3,
        "trainer": {"name": "image-classifier", "dataset": "digits", "epochs": 1,
                    "options": {"threads": 1}},
        "space": {"name": "mobilenet", "params": SMALL_SUPERNET},
        "objectives": [{"name": "accuracy"}, {"name": "flops"}],
        "algorithm": {"sampler": "nsga2", "one_shot": {"supernet_epochs": 1, "finalists": 1}},
        "budget": {"n_trials": 4, "parallelism": 2},
    }
    supernets = server.data_dir / "supernets"
    with Client(server.url) as client:
        first = client.wait(client.submit(spec).id, timeout=300, poll_interval=0.5)
        assert first.status == "succeeded", first.error
        trials = client.trials(first.id).data
        assert sorted(t.user_attrs["one_shot"] for t in trials) == ["eval"] * 3 + ["finetune"]
        evaluations = [t for t in trials if t.user_attrs["one_shot"] == "eval"]
        # Each evaluation is a measured, exported model: its own size and FLOPs, an accuracy.
        assert all(t.state == "complete" and "artifact" in t.user_attrs for t in evaluations)
        assert all(0 < t.metrics["accuracy"] <= 1 for t in evaluations)
        final = next(t for t in trials if t.user_attrs["one_shot"] == "finetune")
        front = client.pareto(first.id)
        assert [t.number for t in front.data] == [final.number]
        assert final.params in [t.params for t in evaluations]
        [stored] = supernets.glob("*.pt")
        trained_at = stored.stat().st_mtime_ns

        # Another device: the same space, data and settings reuse the supernet.
        second = client.wait(client.submit({
            **spec, "name": "e2e-one-shot-local",
            "objectives": [{"name": "accuracy"}, {"name": "latency_ms", "device": "local"}],
        }).id, timeout=300, poll_interval=0.5)
        assert second.status == "succeeded", second.error
        assert list(supernets.glob("*.pt")) == [stored]
        assert stored.stat().st_mtime_ns == trained_at
