"""The Python SDK: a thin, typed client of the REST API (httpx; no server code imported)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import httpx

from edgetune.errors import (
    AuthenticationError,
    ConflictError,
    EdgetuneError,
    InvalidSpecError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
)
from edgetune.schemas import (
    AskedTrialPublic,
    DevicePublic,
    DevicesPublic,
    HealthPublic,
    HypervolumePublic,
    JobPublic,
    JobsPublic,
    ParetoPublic,
    ProbePublic,
    ProbesPublic,
    ReportPublic,
    TrialPublic,
    TrialsPublic,
)
from edgetune.spec import JobSpec

FINISHED = ("succeeded", "failed", "cancelled")
#: How often a request answered 429 (rate limited) or 503 (database unavailable) is sent again,
#: after the Retry-After the server gave.
RETRIES = 3
MAX_RETRY_AFTER_S = 30.0


def local_token(data_dir: str | Path | None = None) -> str | None:
    """The token a client sends when none is given: `EDGETUNE_TOKEN`, else the one a local
    development server wrote into its data directory (`EDGETUNE_DATA_DIR`, default
    `./edgetune-data`)."""
    if token := os.environ.get("EDGETUNE_TOKEN"):
        return token.strip()
    directory = Path(data_dir or os.environ.get("EDGETUNE_DATA_DIR") or "edgetune-data")
    try:
        return (directory.expanduser() / "token").read_text().strip() or None
    except OSError:
        return None


class APIError(EdgetuneError):
    """The server answered with an error the SDK has no more specific exception for."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class Client:
    """`Client("http://127.0.0.1:8000")`; use as a context manager or call `close()`.

    Without `token`, it sends `local_token()`: `EDGETUNE_TOKEN`, or a local server's token.
    """

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        #: Who this client is to ask/tell jobs: asks are idempotent per client id.
        self.client_id = f"{socket.gethostname()[:60]}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        token = token or local_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/api/v1", headers=headers, timeout=timeout
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- jobs ------------------------------------------------------------------------------
    def submit(
        self, spec: JobSpec | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> JobPublic:
        """Queue a search; raises `InvalidSpecError` naming the field when the server refuses.
        The submission carries an idempotency key (a new one unless given), so that a retry
        after a lost answer returns the first job instead of queueing a second."""
        body = spec.model_dump(mode="json") if isinstance(spec, JobSpec) else dict(spec)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return JobPublic.model_validate(
            self._request("POST", "/jobs", json=body, headers=headers, retry_transport=True)
        )

    def get(self, job_id: str) -> JobPublic:
        return JobPublic.model_validate(self._request("GET", f"/jobs/{job_id}"))

    def list(self, *, status: str | None = None, offset: int = 0, limit: int = 50) -> JobsPublic:
        """A page of jobs, newest first, as summaries without their specs (`get` has a job's
        spec); `limit` is at most the server's `max_jobs_page`, 100 by default."""
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if status:
            params["status"] = status
        return JobsPublic.model_validate(self._request("GET", "/jobs", params=params))

    def cancel(self, job_id: str) -> JobPublic:
        return JobPublic.model_validate(self._request("POST", f"/jobs/{job_id}/cancel"))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        progress: Callable[[JobPublic], None] | None = None,
    ) -> JobPublic:
        """Poll until the job ends, calling `progress` with each fresh view of it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if progress is not None:
                progress(job)
            if job.status in FINISHED:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
            time.sleep(poll_interval)

    # --- trials and the front --------------------------------------------------------------
    def trials(
        self, job_id: str, *, state: str | None = None, offset: int = 0, limit: int = 100
    ) -> TrialsPublic:
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if state:
            params["state"] = state
        return TrialsPublic.model_validate(
            self._request("GET", f"/jobs/{job_id}/trials", params=params)
        )

    def get_trial(self, job_id: str, number: int) -> TrialPublic:
        return TrialPublic.model_validate(self._request("GET", f"/jobs/{job_id}/trials/{number}"))

    def pareto(
        self, job_id: str, *, objectives: Sequence[str] | None = None,
        include_dominated: bool = False, reference: Sequence[float] | None = None,
        offset: int = 0, limit: int = 100,
    ) -> ParetoPublic:
        """One page of the ranked front (`include_dominated` for every completed trial)."""
        params = _front_params(objectives, reference)
        params.update(include_dominated=include_dominated, offset=offset, limit=limit)
        return ParetoPublic.model_validate(
            self._request("GET", f"/jobs/{job_id}/pareto", params=params)
        )

    def hypervolume(
        self, job_id: str, *, objectives: Sequence[str] | None = None,
        reference: Sequence[float] | None = None,
    ) -> HypervolumePublic:
        """The feasible front's hypervolume after each completed trial."""
        return HypervolumePublic.model_validate(self._request(
            "GET", f"/jobs/{job_id}/hypervolume", params=_front_params(objectives, reference)
        ))

    def download_artifact(self, job_id: str, number: int, path: str | Path) -> Path:
        """Save trial `number`'s exported model to `path`, checking its sha256 on the way."""
        path = Path(path)
        digest = hashlib.sha256()
        with self._http.stream("GET", f"/jobs/{job_id}/trials/{number}/artifact") as response:
            if not response.is_success:
                response.read()
                self._raise(response)
            expected = response.headers.get("X-Artifact-Sha256")
            if not expected:
                raise APIError(502, "the server sent no X-Artifact-Sha256 to check against")
            tmp = path.with_name(path.name + ".part")
            try:
                with tmp.open("wb") as out:
                    for chunk in response.iter_bytes():
                        digest.update(chunk)
                        out.write(chunk)
                if digest.hexdigest() != expected:
                    raise APIError(502, f"artifact sha256 mismatch: got {digest.hexdigest()}, "
                                   f"expected {expected}")
                tmp.replace(path)
            finally:
                tmp.unlink(missing_ok=True)
        return path

    def events(self, job_id: str, *, interval_s: float = 0.5) -> Iterator[tuple[str, Any]]:
        """Follow the job's server-sent events: (name, data) until the `end` event."""
        with self._http.stream(
            "GET", f"/jobs/{job_id}/events", params={"interval_s": interval_s},
            timeout=httpx.Timeout(self._http.timeout.connect, read=120.0),
        ) as response:
            if not response.is_success:
                response.read()
                self._raise(response)
            name, data = "message", []
            for line in response.iter_lines():
                if line.startswith(":"):
                    continue
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    yield name, json.loads("\n".join(data))
                    if name == "end":
                        return
                    name, data = "message", []
        raise APIError(502, "the event stream closed before the job ended")

    def health(self) -> HealthPublic:
        return HealthPublic.model_validate(self._request("GET", "/health"))

    # --- ask/tell: trials the caller runs itself -----------------------------------------------
    def ask(self, job_id: str, *, client_id: str | None = None) -> AskedTrialPublic:
        """Parameters for a trial of an ask/tell job. Asking again with the same `client_id`
        (by default this client's own) before telling gives back the same trial."""
        return AskedTrialPublic.model_validate(self._request(
            "POST", f"/jobs/{job_id}/trials:ask", json={"client_id": client_id or self.client_id}
        ))

    def report(self, job_id: str, number: int, step: int, values: Mapping[str, float]) -> bool:
        """An intermediate result (objective values by name at `step`); True means stop: the
        job's pruner has pruned the trial, tell it `state="pruned"`."""
        return ReportPublic.model_validate(self._request(
            "POST", f"/jobs/{job_id}/trials/{number}:report",
            json={"step": step, "values": dict(values)},
        )).should_stop

    def tell(
        self, job_id: str, number: int, values: Mapping[str, float] | None = None, *,
        state: str = "complete", metrics: Mapping[str, float] | None = None,
        error: str | None = None,
    ) -> TrialPublic:
        """Finish a trial: its objective values by name, or `state="pruned"` / `"failed"`."""
        body = {"state": state, "values": dict(values or {}), "metrics": dict(metrics or {}),
                "error": error}
        return TrialPublic.model_validate(
            self._request("POST", f"/jobs/{job_id}/trials/{number}:tell", json=body)
        )

    @contextmanager
    def trial(self, job_id: str, *, client_id: str | None = None) -> Iterator[AskedTrial]:
        """`with client.trial(job_id) as t:` train with `t.params`, `t.report(...)` each
        epoch, `t.tell({...})` at the end. An exception in the block tells the trial failed
        (and goes on); a block that ends without telling tells it pruned when the pruner said
        stop, else failed."""
        asked = self.ask(job_id, client_id=client_id)
        t = AskedTrial(self, job_id, asked.number, asked.params)
        try:
            yield t
        except BaseException as e:
            if t.result is None:
                t.result = self.tell(job_id, t.number, state="failed",
                                     error=f"{type(e).__name__}: {e}")
            raise
        if t.result is None:
            if t.should_stop:
                t.result = self.tell(job_id, t.number, state="pruned")
            else:
                t.result = self.tell(job_id, t.number, state="failed",
                                     error="the client's block ended without telling a result")

    # --- devices and latency probes ---------------------------------------------------------
    def register_device(
        self, name: str, *, runtimes: Sequence[str] = ("onnxruntime",),
        hardware: Mapping[str, Any] | None = None, threads: int = 1,
    ) -> DevicePublic:
        """Register the device `name`, or re-attach to it (what an agent does on start)."""
        body = {"name": name, "runtimes": list(runtimes), "hardware": dict(hardware or {}),
                "threads": threads}
        return DevicePublic.model_validate(self._request("POST", "/devices", json=body))

    def devices(self, *, offset: int = 0, limit: int = 50) -> DevicesPublic:
        return DevicesPublic.model_validate(
            self._request("GET", "/devices", params={"offset": offset, "limit": limit})
        )

    def device(self, device_id: str) -> DevicePublic:
        return DevicePublic.model_validate(self._request("GET", f"/devices/{device_id}"))

    def delete_device(self, device_id: str) -> None:
        """Forget the device and its probes."""
        response = self._http.delete(f"/devices/{device_id}")
        if not response.is_success:
            self._raise(response)

    def probe(
        self, model: str | Path, *, device: str, input_shape: Sequence[int],
        runtime: str = "onnxruntime", batch_size: int = 1, threads: int | None = None,
        warmup: int | None = None, min_repeats: int | None = None,
        min_time_s: float | None = None,
    ) -> ProbePublic:
        """Measure the model file at `model` on `device` (a name or an id): the queued probe,
        or a done one from the cache. `input_shape` leaves out the batch dimension; unset
        measurement settings take the device's threads and the server's defaults."""
        params: dict[str, Any] = {"device": device, "runtime": runtime,
                                  "input_shape": [int(d) for d in input_shape],
                                  "batch_size": batch_size}
        for key, value in (("threads", threads), ("warmup", warmup),
                           ("min_repeats", min_repeats), ("min_time_s", min_time_s)):
            if value is not None:
                params[key] = value
        with Path(model).open("rb") as f:
            return ProbePublic.model_validate(self._request(
                "POST", "/probes", params=params, content=f,
                headers={"Content-Type": "application/octet-stream"},
            ))

    def get_probe(self, probe_id: str) -> ProbePublic:
        return ProbePublic.model_validate(self._request("GET", f"/probes/{probe_id}"))

    def probes(
        self, *, device: str | None = None, status: str | None = None, offset: int = 0,
        limit: int = 50,
    ) -> ProbesPublic:
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if device:
            params["device"] = device
        if status:
            params["status"] = status
        return ProbesPublic.model_validate(self._request("GET", "/probes", params=params))

    def wait_probe(
        self, probe_id: str, *, timeout: float | None = None, poll_interval: float = 0.5
    ) -> ProbePublic:
        """Poll until the probe is done or failed; `TimeoutError` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            probe = self.get_probe(probe_id)
            if probe.status in ("done", "failed"):
                return probe
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"probe {probe_id} still {probe.status} after {timeout} s")
            time.sleep(poll_interval)

    # --- transport -------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, retry_transport: bool = False,
                 **kwargs: Any) -> Any:
        """Send; again after Retry-After when rate limited (429) or the database is down
        (503), and, for idempotent calls (`retry_transport`), when the connection failed."""
        for attempt in range(RETRIES + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if not retry_transport or attempt == RETRIES:
                    raise
                time.sleep(0.5 * 2**attempt)
                continue
            if response.is_success:
                return response.json()
            if response.status_code not in (429, 503) or attempt == RETRIES:
                break
            time.sleep(_retry_after(response))
        self._raise(response)

    @staticmethod
    def _raise(response: httpx.Response) -> NoReturn:
        try:
            body = response.json()
            detail = body.get("detail") if isinstance(body, dict) else body
        except ValueError:
            detail = response.text
        if response.status_code == 422 and isinstance(detail, list) and detail:
            first = detail[0]
            loc = [str(p) for p in first.get("loc", []) if p != "body"]
            raise InvalidSpecError(".".join(loc), str(first.get("msg")))
        if response.status_code == 401:
            raise AuthenticationError(f"{detail} (give the client a token, or set "
                                      "EDGETUNE_TOKEN)")
        if response.status_code == 403:
            raise PermissionDeniedError(str(detail))
        if response.status_code == 429:
            raise RateLimitedError(_retry_after(response))
        if response.status_code == 404:
            raise NotFoundError(str(detail))
        if response.status_code == 409:
            raise ConflictError(str(detail))
        raise APIError(response.status_code, detail)


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(response.headers.get("Retry-After", 1))))
    except ValueError:
        return 1.0


class AskedTrial:
    """A trial of an ask/tell job being run by this process (see `Client.trial`)."""

    def __init__(self, client: Client, job_id: str, number: int, params: dict[str, Any]) -> None:
        self.client = client
        self.job_id = job_id
        self.number = number
        self.params = params
        self.should_stop = False
        self.result: TrialPublic | None = None

    def report(self, step: int, values: Mapping[str, float]) -> bool:
        """Report progress; True when the pruner says stop (leave the block to prune it)."""
        self.should_stop = self.client.report(self.job_id, self.number, step, values)
        return self.should_stop

    def tell(self, values: Mapping[str, float], *,
             metrics: Mapping[str, float] | None = None) -> TrialPublic:
        self.result = self.client.tell(self.job_id, self.number, values, metrics=metrics)
        return self.result


def _front_params(
    objectives: Sequence[str] | None, reference: Sequence[float] | None
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if objectives:
        params["objectives"] = ",".join(objectives)
    if reference is not None:
        params["reference"] = ",".join(repr(float(v)) for v in reference)
    return params
