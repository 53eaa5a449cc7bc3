"""What a job's event stream says: each poll of the database becomes server-sent events."""

from __future__ import annotations

import json
from typing import Any

from edgetune.search.front import FrontView
from edgetune.spec import JobSpec
from edgetune.storage import Database, JobRepository, JobStatus
from edgetune.storage.trials import (
    completed_trials,
    finished_trials,
    trial_state_counts,
    trial_user_attrs,
)

#: Seconds of silence after which the stream sends a comment, so proxies keep it open.
KEEPALIVE_S = 15.0


class JobEventStream:
    """Remembers what a client has been told and turns the job's news into SSE messages.

    Events: `progress` (counts changed), `trial` (a trial ended: number, state, values or
    error), `front` (the feasible Pareto front changed: trial numbers, hypervolume, reference
    point) and `end` (the job finished: status, error). A new stream first replays every
    trial that has already ended, so a late watcher sees the whole job.
    """

    def __init__(self, job_id: str, jobs: JobRepository, db: Database, front: FrontView) -> None:
        self.job_id = job_id
        self.jobs = jobs
        self.db = db
        self.front = front
        self._seen: set[int] = set()
        self._progress: dict[str, Any] | None = None
        self._front: list[int] | None = None
        self._id = 0

    def poll(self) -> tuple[list[str], bool]:
        """The events since the last poll, and whether the stream is over."""
        job = self.jobs.get(self.job_id)
        spec = JobSpec.model_validate_json(job.spec)
        events: list[str] = []

        ended = [row for row in finished_trials(self.db, job.study_name)
                 if row[0] not in self._seen]
        if ended:
            values = {}
            if any(state == "COMPLETE" for _, _, state in ended):
                values = {t.trial_id: t.values for t in completed_trials(self.db, job.study_name)}
            errors = trial_user_attrs(
                self.db, [i for i, _, state in ended if state == "FAIL"], keys=["error"]
            )
            for trial_id, number, state in ended:
                self._seen.add(trial_id)
                data: dict[str, Any] = {"number": number, "state": state.lower()}
                if trial_id in values:
                    data["values"] = dict(zip(spec.metric_names, values[trial_id], strict=True))
                if trial_id in errors:
                    data["error"] = errors[trial_id].get("error")
                events.append(self._event("trial", data))

        counts = trial_state_counts(self.db, [job.study_name]).get(job.study_name, {})
        progress = {
            "status": job.status,
            "n_trials": spec.budget.n_trials,
            "complete": counts.get("COMPLETE", 0),
            "pruned": counts.get("PRUNED", 0),
            "failed": counts.get("FAIL", 0),
            "retried": counts.get("FAIL_INFRA", 0),
            "running": counts.get("RUNNING", 0),
        }
        if progress != self._progress:
            self._progress = progress
            events.append(self._event("progress", progress))

        if ended or self._front is None:
            ranked = self.front.ranked(job.study_name, spec)
            numbers = sorted(
                ranked.numbers[i] for i in range(len(ranked.numbers))
                if ranked.on_front[i] and ranked.violation[i] <= 0
            )
            if numbers != self._front:
                self._front = numbers
                reference = {o.name: float(-v if o.direction == "maximize" else v)
                             for o, v in zip(ranked.objectives, ranked.reference, strict=True)
                             if v == v}  # NaN before any trial completed
                events.append(self._event("front", {
                    "trials": numbers, "hypervolume": ranked.hypervolume,
                    "reference_point": reference,
                }))

        finished = JobStatus(job.status).finished
        if finished:
            events.append(self._event("end", {"status": job.status, "error": job.error}))
        return events, finished

    def _event(self, name: str, data: dict[str, Any]) -> str:
        self._id += 1
        return f"id: {self._id}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
