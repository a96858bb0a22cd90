"""bullmq's Worker, without its futile fetches.

The Python bullmq Worker keeps one task per free slot asking Redis for a job. When the queue is
empty, one of them blocks on the queue's marker and the others stop; but each time a job
arrives, every free slot asks again at once, and all but one find nothing: at a steady arrival
rate (rather than a backlog), 3.5 script calls per job at concurrency 1, 13-16 at 20 (measured,
../shared/research/python-floor.md). Here the slots ask one at a time, and once one found the
queue empty the others do not ask (they return empty-handed, and one of them waits for the
marker): one fetch answers each wake-up, it takes the job, and the free slots ask again, on and
on while they find jobs; 3 fetches per job at any concurrency (tests/queue/test_fetching.py).
No job waits longer than before: an arrival always wakes the waiting slot, and a backlog is
fetched slot after slot, a round trip each.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bullmq import Worker


class FetchingWorker(Worker):  # type: ignore[misc]  # bullmq is untyped
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._asking = asyncio.Lock()
        self._answered: Any = None  # the wait whose wake-up a fetch has already answered

    async def moveToActive(self, token: str) -> Any:
        async with self._asking:
            waiting = self.waiting
            # The marker (or the wait's timeout) woke the waiting slot: one fetch answers it,
            # whichever slot asks first (the wait stays set until its slot has fetched).
            woken = waiting is not None and waiting.done() and waiting is not self._answered
            if woken:
                self._answered = waiting
            elif self.drained:
                return None  # found empty a moment ago: wait for the marker instead
            return await super().moveToActive(token)
