"""The shared job watcher: one read for every watched job per tick, fan-out to waiters."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from service.jobs.watcher import JobState, JobWatcher, TooManyWaiters

RUNNING = JobState("running", {"fraction": 0.1, "stage": "attack", "message": "a"})
LATER = JobState("running", {"fraction": 0.5, "stage": "attack", "message": "b"})


class Rows:
    """An in-memory jobs table that records every read."""

    def __init__(self, states: dict[str, JobState]) -> None:
        self.states = states
        self.reads: list[list[str]] = []
        self.fail = False

    def __call__(self, job_ids: Sequence[str]) -> Mapping[str, JobState]:
        self.reads.append(list(job_ids))
        if self.fail:
            raise ConnectionError("database restarting")
        return {i: self.states[i] for i in job_ids if i in self.states}


def test_many_waiters_cost_one_read_per_tick() -> None:
    rows = Rows({f"j{i}": RUNNING for i in range(5)})
    watcher = JobWatcher(rows, interval=0.05, max_waiters=1000)

    async def scenario() -> list[JobState | None]:
        subscriptions = [watcher.subscribe(f"j{i % 5}", RUNNING) for i in range(200)]
        waits = [asyncio.create_task(s.next_change(5)) for s in subscriptions]
        await asyncio.sleep(0.3)
        assert not any(w.done() for w in waits)  # nothing changed: nobody woke
        rows.states["j3"] = LATER
        done = await asyncio.gather(*(w for i, w in enumerate(waits) if i % 5 == 3))
        for w in waits:
            w.cancel()
        for s in subscriptions:
            s.close()
        return done

    changes = asyncio.run(scenario())
    assert changes == [LATER] * 40
    assert all(sorted(read) == [f"j{i}" for i in range(5)] for read in rows.reads)
    assert 3 <= len(rows.reads) <= 20  # ticks, not waiters
    assert watcher.waiters == 0


def test_timeout_cap_and_idle_stop() -> None:
    rows = Rows({"j1": RUNNING})
    watcher = JobWatcher(rows, interval=0.02, max_waiters=2)

    async def scenario() -> None:
        first = watcher.subscribe("j1", RUNNING)
        second = watcher.subscribe("j1", RUNNING)
        with pytest.raises(TooManyWaiters):
            watcher.subscribe("j2", RUNNING)
        assert await first.next_change(0.1) is None  # unchanged: the timeout
        first.close()
        first.close()  # idempotent
        third = watcher.subscribe("j2", RUNNING)
        second.close()
        third.close()
        reads = len(rows.reads)
        await asyncio.sleep(0.2)
        assert len(rows.reads) <= reads + 1  # nobody waits: the watcher stops reading

    asyncio.run(scenario())
    assert watcher.waiters == 0


def test_a_waiter_whose_baseline_is_stale_returns_at_the_first_read() -> None:
    rows = Rows({"j1": LATER})
    watcher = JobWatcher(rows, interval=0.02, max_waiters=10)

    async def scenario() -> JobState | None:
        subscription = watcher.subscribe("j1", RUNNING)
        try:
            return await subscription.next_change(2)
        finally:
            subscription.close()

    assert asyncio.run(scenario()) == LATER


def test_a_vanished_job_closes_its_subscriptions() -> None:
    rows = Rows({})
    watcher = JobWatcher(rows, interval=0.02, max_waiters=10)

    async def scenario() -> tuple[JobState | None, bool]:
        subscription = watcher.subscribe("j1", RUNNING)
        return await subscription.next_change(2), subscription.closed

    assert asyncio.run(scenario()) == (None, True)
    assert watcher.waiters == 0


def test_read_errors_are_retried_and_waiters_kept() -> None:
    rows = Rows({"j1": RUNNING})
    rows.fail = True
    watcher = JobWatcher(rows, interval=0.01, max_waiters=10)

    async def scenario() -> JobState | None:
        subscription = watcher.subscribe("j1", RUNNING)
        wait = asyncio.create_task(subscription.next_change(5))
        await asyncio.sleep(0.1)
        rows.states["j1"] = LATER
        rows.fail = False
        try:
            return await wait
        finally:
            subscription.close()

    assert asyncio.run(scenario()) == LATER
    assert len(rows.reads) >= 2
