"""The event hub in process, on a real database: every stream of a job is served by one shared
poll, a late subscriber sees the whole job, the interval has a floor and the caps hold."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgetune.search.events import JobEventHub, JobEventStream, StreamLimitReached
from edgetune.search.front import FrontView
from edgetune.spec import JobSpec
from edgetune.storage import Database, JobRepository, open_database


class CountedStream(JobEventStream):
    """The real stream, counting its polls of the database."""

    polls = 0

    def poll(self):  # type: ignore[no-untyped-def]
        CountedStream.polls += 1
        return super().poll()


@pytest.fixture
def db(fresh_data_dir: Path):
    database = open_database(f"sqlite:///{fresh_data_dir / 'edgetune.db'}")
    yield database
    database.dispose()


def hub_for(db: Database, **caps: int) -> JobEventHub:
    jobs, front = JobRepository(db), FrontView(db)
    return JobEventHub(lambda job_id: CountedStream(job_id, jobs, db, front),
                       max_streams=caps.get("max_streams", 100),
                       max_per_token=caps.get("max_per_token", 100), min_interval_s=0.5)


async def first_event(subscription) -> str:  # type: ignore[no-untyped-def]
    messages = subscription.messages()
    return await asyncio.wait_for(messages.__anext__(), 30)


def test_fifty_streams_of_a_job_share_one_poll(db: Database) -> None:
    job = JobRepository(db).create(JobSpec(name="watched", mode="ask-tell",
                                           space={"name": None, "params": [
                                               {"type": "float", "name": "x", "low": 0,
                                                "high": 1}]},
                                           objectives=[{"name": "f1"}]))
    CountedStream.polls = 0

    async def scenario() -> None:
        hub = hub_for(db)
        subscriptions = [hub.subscribe(job.id, f"token-{i % 5}", 0.1) for i in range(50)]
        assert {s.interval_s for s in subscriptions} == {0.5}  # raised to the floor
        firsts = await asyncio.gather(*(first_event(s) for s in subscriptions))
        assert all("event: progress" in f for f in firsts)
        assert len(hub.broadcasts) == 1
        # A late subscriber is replayed what the others saw, without a poll of its own.
        polls = CountedStream.polls
        late = hub.subscribe(job.id, "token-late", 0.5)
        assert "event: progress" in await first_event(late)
        assert CountedStream.polls <= polls + 1
        await hub.close()

    asyncio.run(scenario())
    assert 1 <= CountedStream.polls <= 3  # one poll fed fifty streams; not fifty polls


def test_caps_per_token_and_in_all(db: Database) -> None:
    job = JobRepository(db).create(JobSpec(name="capped"))

    async def scenario() -> None:
        hub = hub_for(db, max_streams=3, max_per_token=2)
        a = [hub.subscribe(job.id, "a", 1.0) for _ in range(2)]
        with pytest.raises(StreamLimitReached, match="PER_TOKEN \\(2\\)"):
            hub.subscribe(job.id, "a", 1.0)
        hub.subscribe(job.id, "b", 1.0)
        with pytest.raises(StreamLimitReached, match="MAX_STREAMS \\(3\\)"):
            hub.subscribe(job.id, "c", 1.0)
        hub.unsubscribe(a[0])
        hub.unsubscribe(a[0])  # twice is harmless
        hub.subscribe(job.id, "a", 1.0)
        await hub.close()

    asyncio.run(scenario())
