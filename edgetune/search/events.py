"""What a job's event stream says, and how one API process serves every stream of a job from
one shared poll of the database: each poll becomes server-sent events, fanned out to the job's
subscribers, under caps on how many streams a token and the process may hold open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

from edgetune.errors import NotFoundError
from edgetune.schemas import JobProgress
from edgetune.search.front import FrontView
from edgetune.storage import Database, JobRepository, JobStatus
from edgetune.storage.trials import finished_trials, trial_state_counts, trial_user_attrs

logger = logging.getLogger(__name__)

#: Seconds of silence after which the stream sends a comment, so proxies keep it open.
KEEPALIVE_S = 15.0
#: How often the hub asks the database which tokens of its open streams were revoked: a
#: revoked token's stream ends within about this long.
TOKEN_RECHECK_S = 2.0
#: Events a subscriber may fall behind by (a client that stops reading) before its stream is
#: closed, so that it cannot make the server hold an ever longer backlog.
MAX_BACKLOG = 10_000
#: Polls of the database that run at once, across every job: many watched jobs make their
#: events slower, not the rest of the API (polls run in its shared thread pool).
POLL_SLOTS = 2
#: A subscription whose response never started reading it (its client left at once) is
#: dropped after this long.
UNSTARTED_S = 30.0

#: An event as the shared poll sees it: its name and its data.
Event = tuple[str, dict[str, Any]]


class JobEventStream:
    """Remembers what a client has been told and turns the job's news into SSE messages.

    Events: `progress` (counts changed), `trial` (a trial ended: number, state, values or
    error), `front` (the feasible Pareto front changed: trial numbers, hypervolume, reference
    point) and `end` (the job finished: status, error). One per job and API process, shared
    by the job's streams through a `JobBroadcast`, which replays to a late watcher every trial
    that has already ended, so that it sees the whole job.
    """

    def __init__(self, job_id: str, jobs: JobRepository, db: Database, front: FrontView) -> None:
        self.job_id = job_id
        self.jobs = jobs
        self.db = db
        self.front = front
        self._seen: set[int] = set()
        self._progress: dict[str, Any] | None = None
        self._front: list[int] | None = None

    def poll(self) -> tuple[list[Event], bool]:
        """The events since the last poll, and whether the stream is over."""
        job = self.jobs.get(self.job_id)
        spec = job.spec
        events: list[Event] = []

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
                events.append(("trial", data))

        counts = trial_state_counts(self.db, [job.study_name]).get(job.study_name, {})
        progress = {"status": job.status,
                    **JobProgress.from_counts(spec.budget.n_trials, counts).model_dump()}
        if progress != self._progress:
            self._progress = progress
            events.append(("progress", progress))

        if ranked is not None and (numbers := ranked.feasible_front()) != self._front:
            self._front = numbers
            events.append(("front", {
                "trials": numbers, "hypervolume": ranked.hypervolume,
                "reference_point": ranked.reference_point(),
            }))

        finished = JobStatus(job.status).finished
        if finished:
            events.append(("end", {"status": job.status, "error": job.error}))
        return events, finished



def format_event(event_id: int, name: str, data: dict[str, Any]) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data)}\n\n"


class StreamLimitReached(Exception):
    """A new stream would pass a cap; the message names it. Retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Subscription:
    """One client's stream of a job: the events not yet sent, in order."""

    def __init__(self, job_id: str, token_id: str, interval_s: float) -> None:
        self.job_id = job_id
        self.token_id = token_id
        self.interval_s = interval_s
        self.created = time.monotonic()
        self.started = False
        self.closed = False
        self.reason = ""
        self._pending: deque[Event] = deque()
        self._wake = asyncio.Event()

    def push(self, event: Event) -> None:
        if self.closed:
            return
        if len(self._pending) >= MAX_BACKLOG:
            self.close("the client fell too far behind")
            return
        self._pending.append(event)
        self._wake.set()

    def close(self, reason: str = "") -> None:
        """End the stream once what is queued is sent (with `reason` as a comment, if any)."""
        if not self.closed:
            self.closed, self.reason = True, reason
            self._wake.set()

    async def messages(self) -> AsyncIterator[str]:
        """The SSE text of each event as it comes, keep-alive comments in the silences; ends
        after `end`, or when the subscription is closed."""
        self.started = True
        event_id = 0
        while True:
            while self._pending:
                name, data = self._pending.popleft()
                event_id += 1
                yield format_event(event_id, name, data)
                if name == "end":
                    return
            if self.closed:
                if self.reason:
                    yield f": {self.reason}\n\n"
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), KEEPALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"


class JobBroadcast:
    """One job's shared poll: a task polls the database (`JobEventStream`) as often as its
    most eager subscriber asks (never more often than the hub's floor) and hands each event to
    every subscriber. It keeps what a late subscriber needs to see the whole job: every trial
    event so far and the latest progress and front."""

    def __init__(self, stream: JobEventStream, hub: JobEventHub) -> None:
        self.stream = stream
        self.hub = hub
        self.subscribers: set[Subscription] = set()
        self._trials: list[Event] = []
        self._latest: dict[str, Event] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, subscription: Subscription) -> None:
        for event in self._trials:
            subscription.push(event)
        for name in ("progress", "front", "end"):
            if name in self._latest:
                subscription.push(self._latest[name])
        self.subscribers.add(subscription)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"events-{self.stream.job_id}")

    def _publish(self, event: Event) -> None:
        if event[0] == "trial":
            self._trials.append(event)
        else:
            self._latest[event[0]] = event
        for subscription in list(self.subscribers):
            subscription.push(event)

    async def _run(self) -> None:
        failures = 0
        try:
            while self.subscribers:
                try:
                    async with self.hub.poll_slots:
                        events, finished = await asyncio.to_thread(self.stream.poll)
                    failures = 0
                except NotFoundError:
                    events, finished = [], True
                except Exception as e:  # the database is down: keep the streams, retry
                    failures += 1
                    logger.warning("events of job %s: poll failed: %s", self.stream.job_id, e)
                    events, finished = [], False
                for event in events:
                    self._publish(event)
                if finished:
                    for subscription in list(self.subscribers):
                        subscription.close()
                    return
                interval = min((s.interval_s for s in self.subscribers), default=1.0)
                await asyncio.sleep(interval * min(2**failures, 32))
        finally:
            self.hub._ended(self)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


class JobEventHub:
    """Every open event stream of one API process: at most `max_streams` in all and
    `max_per_token` per token, each job served by one `JobBroadcast`, and the tokens of the
    open streams checked every `TOKEN_RECHECK_S` by `live_tokens` (which of these token ids
    are still valid), so that revoking a token ends its streams.

    `open_stream(job_id)` makes the job's `JobEventStream`. Used from the event loop only."""

    def __init__(
        self,
        open_stream: Callable[[str], JobEventStream],
        *,
        max_streams: int,
        max_per_token: int,
        min_interval_s: float,
        live_tokens: Callable[[Collection[str]], Awaitable[set[str]]] | None = None,
    ) -> None:
        if max_streams < 1 or max_per_token < 1:
            raise ValueError(f"The stream caps are {max_streams} and {max_per_token}, but "
                             "must be >= 1.")
        self.open_stream = open_stream
        self.max_streams = max_streams
        self.max_per_token = max_per_token
        self.min_interval_s = min_interval_s
        self.live_tokens = live_tokens
        self.broadcasts: dict[str, JobBroadcast] = {}
        self.subscriptions: set[Subscription] = set()
        self._per_token: dict[str, int] = {}
        self._checker: asyncio.Task[None] | None = None
        self._poll_slots: asyncio.Semaphore | None = None

    @property
    def poll_slots(self) -> asyncio.Semaphore:
        if self._poll_slots is None:  # made in the running loop
            self._poll_slots = asyncio.Semaphore(POLL_SLOTS)
        return self._poll_slots

    def subscribe(self, job_id: str, token_id: str, interval_s: float) -> Subscription:
        """A new stream of `job_id` for the token; `StreamLimitReached` past a cap."""
        if len(self.subscriptions) >= self.max_streams:
            raise StreamLimitReached(
                f"this server has {len(self.subscriptions)} event streams open, the most "
                f"EDGETUNE_EVENTS_MAX_STREAMS ({self.max_streams}) allows; retry later")
        held = self._per_token.get(token_id, 0)
        if held >= self.max_per_token:
            raise StreamLimitReached(
                f"this token has {held} event streams open, the most "
                f"EDGETUNE_EVENTS_MAX_STREAMS_PER_TOKEN ({self.max_per_token}) allows; close "
                "one first")
        subscription = Subscription(job_id, token_id, max(interval_s, self.min_interval_s))
        broadcast = self.broadcasts.get(job_id)
        if broadcast is None:
            broadcast = self.broadcasts[job_id] = JobBroadcast(self.open_stream(job_id), self)
        self.subscriptions.add(subscription)
        self._per_token[token_id] = held + 1
        broadcast.add(subscription)
        if self.live_tokens is not None and self._checker is None:
            self._checker = asyncio.get_running_loop().create_task(
                self._check_tokens(), name="events-token-check")
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a stream (its client left or it ended); safe to call twice."""
        subscription.close()
        if subscription not in self.subscriptions:
            return
        self.subscriptions.discard(subscription)
        left = self._per_token.get(subscription.token_id, 1) - 1
        if left > 0:
            self._per_token[subscription.token_id] = left
        else:
            self._per_token.pop(subscription.token_id, None)
        broadcast = self.broadcasts.get(subscription.job_id)
        if broadcast is not None:
            broadcast.subscribers.discard(subscription)

    def _ended(self, broadcast: JobBroadcast) -> None:
        if self.broadcasts.get(broadcast.stream.job_id) is broadcast:
            del self.broadcasts[broadcast.stream.job_id]
        for subscription in list(broadcast.subscribers):
            subscription.close()

    async def _check_tokens(self) -> None:
        assert self.live_tokens is not None
        while True:
            await asyncio.sleep(TOKEN_RECHECK_S)
            now = time.monotonic()
            for subscription in list(self.subscriptions):
                if not subscription.started and now - subscription.created > UNSTARTED_S:
                    self.unsubscribe(subscription)
            tokens = {s.token_id for s in self.subscriptions}
            if not tokens:
                continue
            try:
                live = await self.live_tokens(tokens)
            except Exception as e:  # the database is down: check again next time
                logger.warning("could not check the tokens of open event streams: %s", e)
                continue
            for subscription in list(self.subscriptions):
                if subscription.token_id not in live:
                    subscription.close("the token was revoked")
                    self.unsubscribe(subscription)

    async def close(self) -> None:
        """End every stream (the server is stopping)."""
        for subscription in list(self.subscriptions):
            subscription.close("the server is stopping")
        tasks = [b._task for b in self.broadcasts.values() if b._task is not None]
        if self._checker is not None:
            tasks.append(self._checker)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
