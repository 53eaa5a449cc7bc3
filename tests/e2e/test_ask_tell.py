"""Ask/tell through a real server: clients that run the trials themselves."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from servers import RunningServer, auth_headers, start_server, stop_server

from edgetune.client import Client
from edgetune.errors import ConflictError, InvalidSpecError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # A 5 s lease: trials' heartbeats every 1 s, silent ones failed after 4 s.
    running = start_server(tmp_path_factory.mktemp("ask-tell"), workers=1,
                           env={"EDGETUNE_JOB_LEASE_S": "5"})
    yield running
    stop_server(running)


def job_spec(name: str, n_trials: int, parallelism: int, **extra: object) -> dict:
    return {
        "name": name, "seed": 0, "mode": "ask-tell",
        "space": {"name": None, "params": [
            {"type": "float", "name": "x", "low": 0.0, "high": 1.0},
            {"type": "categorical", "name": "act", "choices": ["relu", "gelu"]},
        ]},
        "objectives": [{"name": "f1"}, {"name": "f2"}],
        "algorithm": {"sampler": "nsga2"},
        "budget": {"n_trials": n_trials, "parallelism": parallelism},
        **extra,
    }


def test_ask_is_idempotent_per_client_and_tell_ends_the_job(server: RunningServer) -> None:
    with Client(server.url) as client:
        job = client.submit(job_spec("ask-tell", n_trials=4, parallelism=2))
        assert job.status == "running"  # no worker needed: clients ask at once
        a = client.ask(job.id, client_id="a")
        again = client.ask(job.id, client_id="a")
        assert (again.number, again.params, again.resumed) == (a.number, a.params, True)
        assert not a.resumed and 0 <= a.params["x"] <= 1 and a.params["act"] in ("relu", "gelu")
        b = client.ask(job.id, client_id="b")
        assert b.number != a.number
        with pytest.raises(ConflictError, match="parallelism"):
            client.ask(job.id, client_id="c")

        assert client.report(job.id, a.number, 1, {"f1": 0.5, "f2": 0.7}) is False
        with pytest.raises(InvalidSpecError, match="missing: f2"):
            client.tell(job.id, a.number, {"f1": 0.1})
        told = client.tell(job.id, a.number, {"f1": 0.1, "f2": 0.9}, metrics={"params": 12.0})
        assert told.state == "complete" and told.values == {"f1": 0.1, "f2": 0.9}
        assert told.metrics["params"] == 12.0
        assert client.tell(job.id, a.number, {"f1": 0.3, "f2": 0.3}).values == told.values
        with pytest.raises(ConflictError, match="complete"):
            client.report(job.id, a.number, 2, {"f1": 0.5, "f2": 0.7})
        client.tell(job.id, b.number, state="failed", error="out of memory")

        # The SDK's block: the rest of the budget, one of them failing by an exception.
        with pytest.raises(RuntimeError), client.trial(job.id) as t:
            raise RuntimeError("diverged")
        while client.get(job.id).status == "running":
            with client.trial(job.id) as t:
                t.tell({"f1": t.params["x"], "f2": 1 - t.params["x"]})
        job = client.get(job.id)
        assert job.status == "succeeded"
        assert (job.progress.complete, job.progress.failed) == (2, 2)
        assert client.trials(job.id, state="fail").data[0].error == "out of memory"
        with pytest.raises(ConflictError, match="succeeded"):
            client.ask(job.id)
        assert client.pareto(job.id).front_size >= 1


def test_the_pruner_answers_reports(server: RunningServer) -> None:
    spec = job_spec("ask-tell-sha", n_trials=2, parallelism=2,
                    objectives=[{"name": "accuracy"}],
                    # Fixed rungs: the default waits for complete trials to place them.
                    algorithm={"sampler": "random", "pruner": "sha",
                               "options": {"rung_correlation": 0}})
    with Client(server.url) as client:
        job = client.submit(spec)
        good, bad = client.ask(job.id, client_id="good"), client.ask(job.id, client_id="bad")
        assert client.report(job.id, good.number, 1, {"accuracy": 0.9}) is False
        assert client.report(job.id, bad.number, 1, {"accuracy": 0.1}) is True
        assert client.tell(job.id, bad.number, state="pruned").state == "pruned"
        client.tell(job.id, good.number, {"accuracy": 0.95})
        assert client.get(job.id).status == "succeeded"


def test_a_silent_client_loses_its_trial_which_is_asked_again(server: RunningServer) -> None:
    with Client(server.url) as client:
        job = client.submit(job_spec("ask-tell-reap", n_trials=1, parallelism=1))
        lost = client.ask(job.id, client_id="gone")
        deadline = time.monotonic() + 60
        while True:  # heartbeats stop; after the grace period the next ask reaps the trial
            try:
                fresh = client.ask(job.id, client_id="new")
                break
            except ConflictError:
                assert time.monotonic() < deadline, "the silent trial was never reaped"
                time.sleep(1)
        assert fresh.number != lost.number
        gone = client.get_trial(job.id, lost.number)
        assert gone.state == "fail" and gone.user_attrs["edgetune:infra_failure"] is True
        client.tell(job.id, fresh.number, {"f1": 0.2, "f2": 0.3})
        job = client.get(job.id)
        assert job.status == "succeeded" and job.progress.retried == 1


def test_bad_ask_tell_requests_get_422_or_404_naming_the_problem(server: RunningServer) -> None:
    with Client(server.url) as client:
        with pytest.raises(InvalidSpecError, match="optuna backend"):
            client.submit(job_spec("x", 2, 1, algorithm={"backend": "ray", "sampler": "tpe"}))
        job = client.submit(job_spec("ask-tell-bad", n_trials=2, parallelism=1))
        base = f"{server.url}/api/v1/jobs/{job.id}"
        assert httpx.post(f"{base}/trials:ask", json={"client_id": "../x"}, headers=auth_headers()).status_code == 422
        assert httpx.post(f"{base}/trials/99:tell", json={}, headers=auth_headers()).status_code == 404
        t = client.ask(job.id)
        nan = httpx.post(f"{base}/trials/{t.number}:report",
                         content=b'{"step": 1, "values": {"f1": NaN, "f2": 1}}',
                         headers={"content-type": "application/json", **auth_headers()})
        assert nan.status_code == 422
        unknown = httpx.post(f"{base}/trials/{t.number}:report",
                             json={"step": 1, "values": {"f1": 0.5, "f9": 1.0}},
                             headers=auth_headers())
        assert unknown.status_code == 422 and "f9" in unknown.text, unknown.text
        assert client.get_trial(job.id, t.number).intermediate_values == {}
        assert client.cancel(job.id).status == "cancelled"
        with pytest.raises(ConflictError, match="cancelled"):
            client.ask(job.id)
