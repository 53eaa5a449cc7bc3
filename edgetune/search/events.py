"""What a job's event stream says: each poll of the database becomes server-sent events."""

from __future__ import annotations

import json
from typing import Any

from edgetune.schemas import JobProgress
from edgetune.search.front import FrontView
from edgetune.spec import JobSpec
from edgetune.storage import Database, JobRepository, JobStatus
from edgetune.storage.trials import finished_trials, trial_state_counts, trial_user_attrs

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
        ranked = self.front.ranked(job.study_name, spec) if ended or self._front is None else None
        if ended and ranked is not None:
            values = dict(zip(ranked.trial_ids, ranked.values.tolist(), strict=True))
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
        progress = {"status": job.status,
                    **JobProgress.from_counts(spec.budget.n_trials, counts).model_dump()}
        if progress != self._progress:
            self._progress = progress
            events.append(self._event("progress", progress))

        if ranked is not None and (numbers := ranked.feasible_front()) != self._front:
            self._front = numbers
            events.append(self._event("front", {
                "trials": numbers, "hypervolume": ranked.hypervolume,
                "reference_point": ranked.reference_point(),
            }))

        finished = JobStatus(job.status).finished
        if finished:
            events.append(self._event("end", {"status": job.status, "error": job.error}))
        return events, finished

    def _event(self, name: str, data: dict[str, Any]) -> str:
        self._id += 1
        return f"id: {self._id}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
