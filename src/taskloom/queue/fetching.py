"""bullmq's Worker, without its futile fetches.

The Python bullmq Worker keeps one task per free slot asking Redis for a job. When the queue is
empty, one of them blocks on the queue's marker and the others stop; but each time a job
arrives, every free slot asks again at once, and all but one find nothing: at a steady arrival
rate (rather than a backlog), 3.5 script calls per job at concurrency 1, 13-16 at 20 (measured,
../shared/research/python-floor.md). Here the slots ask one at a time, and once one found the
queue empty the others do not ask (they return empty-handed, and one of them waits for the
marker): the next arrival wakes that slot, it takes the job, and the free slots ask again, on
and on while they find jobs. No job waits longer than before: an arrival always wakes the
waiting slot, and a backlog is fetched slot after slot, a round trip each.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bullmq import Worker


class FetchingWorker(Worker):  # type: ignore[misc]  # bullmq is untyped
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._asking = asyncio.Lock()

    async def moveToActive(self, token: str) -> Any:
        async with self._asking:
            waiting = self.waiting
            woken = waiting is not None and waiting.done()  # the marker's slot, or its timeout
            if self.drained and not woken:
                return None  # found empty a moment ago: wait for the marker instead
            return await super().moveToActive(token)
