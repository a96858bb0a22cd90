"""FetchingWorker (queue/fetching.py): jobs arriving one by one cost about one fetch each, not
one per free slot, and none waits or is left behind; a burst still runs in parallel. Against
the real Redis, with bullmq's own Worker as the baseline in the same test."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from bullmq import Job, Queue, Worker

from taskloom.queue.fetching import FetchingWorker

CONCURRENCY = 10
ARRIVALS = 20


def _counting_fetches(worker: Worker) -> list[int]:
    """Count bullmq's fetches (`moveToActive`, its call to Redis) in the list's one element."""
    fetches = [0]
    fetch = worker.backend.moveToActive

    async def counted(*args: Any, **kwargs: Any) -> Any:
        fetches[0] += 1
        return await fetch(*args, **kwargs)

    worker.backend.moveToActive = counted
    return fetches


async def _run(worker_class: type[Worker], redis_url: str, *, burst: int = 0) -> dict[str, Any]:
    """Fetches that reached Redis and what was processed: ARRIVALS jobs one at a time (each
    waited for), then `burst` jobs at once."""
    name = f"fetching-{secrets.token_hex(4)}"
    queue = Queue(name, {"connection": redis_url})
    processed: list[str] = []
    in_flight, most = [0], [0]
    changed = asyncio.Event()

    async def until(count: int, seconds: float) -> None:
        async with asyncio.timeout(seconds):
            while len(processed) < count:
                changed.clear()
                await changed.wait()

    async def process(job: Job, token: str) -> None:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        await asyncio.sleep(0.05 if burst else 0)
        in_flight[0] -= 1
        processed.append(job.id)
        changed.set()

    worker = worker_class(
        name,
        process,
        {"connection": redis_url, "concurrency": CONCURRENCY, "autorun": False, "drainDelay": 1},
    )
    fetches = _counting_fetches(worker)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.3)  # drained: one slot waits for the marker
        for n in range(ARRIVALS):
            await queue.add("job", {"n": n}, {"removeOnComplete": True})
            await until(n + 1, 5)
            await asyncio.sleep(0.01)
        arrivals_fetches = fetches[0]
        if burst:
            await queue.addBulk(
                [{"name": "job", "data": {"n": n}, "opts": {"removeOnComplete": True}}] * burst
            )
            await until(ARRIVALS + burst, 10)
        return {"fetches": arrivals_fetches, "processed": len(processed), "most": most[0]}
    finally:
        await worker.close(force=True)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await queue.obliterate(force=True)
        await queue.close()


async def test_jobs_arriving_one_by_one_cost_about_one_fetch_each(redis_url: str) -> None:
    ours = await _run(FetchingWorker, redis_url)
    theirs = await _run(Worker, redis_url)
    assert ours["processed"] == theirs["processed"] == ARRIVALS
    # Each arrival: the wake-up's fetch (the job), and the one the marker the job's move leaves
    # wakes, which finds the queue empty (measured: 2; 3 when the free slots also asked at once;
    # bullmq's Worker: about 13, every free slot asking); the margin is for the waits' 1 s
    # timeouts on a slow machine.
    assert ours["fetches"] <= 2 * ARRIVALS + 5
    assert theirs["fetches"] > 2 * ours["fetches"]


async def test_a_burst_still_runs_on_every_slot_at_once(redis_url: str) -> None:
    ran = await _run(FetchingWorker, redis_url, burst=50)
    assert ran["processed"] == ARRIVALS + 50
    assert ran["most"] == CONCURRENCY


async def test_a_backlog_is_fetched_by_the_completions_not_by_one_call_each(
    redis_url: str,
) -> None:
    """Each completion takes the next job in its own script call (`fetchNext`): a backlog of
    60 jobs at concurrency 2 costs a handful of separate fetches, not 60, and every job runs
    once."""
    name = f"fetching-{secrets.token_hex(4)}"
    queue = Queue(name, {"connection": redis_url})
    processed: list[str] = []
    done = asyncio.Event()
    backlog = 60

    async def process(job: Job, token: str) -> None:
        processed.append(job.id)

    completed: list[str] = []

    def on_completed(job: Job, result: object) -> None:
        # After its completion's script call (the job's own move, and the next job's fetch).
        completed.append(job.id)
        if len(completed) >= backlog:
            done.set()

    await queue.addBulk(
        [
            {"name": "job", "data": {"n": n}, "opts": {"removeOnComplete": True}}
            for n in range(backlog)
        ]
    )
    worker = FetchingWorker(
        name, process, {"connection": redis_url, "concurrency": 2, "autorun": False}
    )
    worker.on("completed", on_completed)
    fetches = _counting_fetches(worker)
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            await done.wait()
        assert sorted(processed) == sorted(set(processed))
        assert len(processed) == backlog
        assert fetches[0] <= 6
        assert await queue.getJobCounts("wait", "active") == {"wait": 0, "active": 0}
    finally:
        await worker.close(force=True)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await queue.obliterate(force=True)
        await queue.close()
