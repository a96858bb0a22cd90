"""Inline executions (ADR 0018): a one-step execution without I/O, finished by the worker in one
call (`taskloom_run_inline`, migration 0028) instead of a claim and a step's success.

The API starts an execution whose definition is inline (`taskloom_start` answers `inline`) with
its input in the job's data, when the request's body is at most INLINE_INPUT_BYTES and its
organization was not lately seen with INLINE_QUEUED_MOST executions waiting. A worker
that has seen the same workflow version of the organization before (a claim read its
definition: `Definitions`) runs the step from the job's data alone and commits its output and
the execution's end in one statement, which writes nothing unless the row is still queued,
never claimed, not cancelled, with the very definition and input the worker used. Otherwise it
claims the execution and runs it the usual way: a transform does nothing twice.

The input stays in Redis only while its job waits or runs: the job is removed as soon as it
completes (`JOB_INPUT_KEY` in the queue's spec), and a worker that does not run it inline takes
the input out of the job's data before it runs it (a failed job is kept for days).
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from decimal import Decimal
from typing import Any

import structlog
from bullmq import Job
from redis.exceptions import RedisError

from taskloom.executions.state import Run

log = structlog.get_logger("taskloom.queue")

INLINE_INPUT_BYTES = 4_096  # the largest execute body whose input the job carries
# An organization seen with this many executions waiting or admitted gets no input carried: a
# flood's inputs stay in PostgreSQL, not in Redis's ready lists (about 4 MiB each at most).
INLINE_QUEUED_MOST = 1_000
JOB_INPUT_KEY = "input"  # the job data's key that holds it
DEFINITIONS_KEPT = 1_024  # (organization, workflow, version) definitions a worker remembers
_DEFINITION_BYTES = 65_536  # a larger definition is not remembered
_WORKFLOW_KEY, _VERSION_KEY = "workflow_id", "workflow_version"  # the version it runs
_CARRIED = frozenset({JOB_INPUT_KEY, _WORKFLOW_KEY, _VERSION_KEY})  # what job_data adds


def inline_definition(definition: Any) -> bool:
    """Whether the definition is one `transform` step that needs nothing but the execution's
    input: no `when`, `for_each`, `output` or `deadline`, and no word `secrets` anywhere (the
    same test as `taskloom_inline_definition`, migration 0028, which tells the API)."""
    if not isinstance(definition, dict) or "output" in definition or "deadline" in definition:
        return False
    steps = definition.get("steps")
    if not isinstance(steps, list) or len(steps) != 1 or not isinstance(steps[0], dict):
        return False
    step = steps[0]
    if step.get("type") != "transform" or "when" in step or "for_each" in step:
        return False
    return "secrets" not in json.dumps(definition)


def job_data(
    data: dict[str, Any], *, input: dict[str, Any], workflow_id: uuid.UUID, version: int
) -> dict[str, Any]:
    """A job's data carrying the execution's input and the workflow version it runs."""
    return {
        **data,
        JOB_INPUT_KEY: input,
        _WORKFLOW_KEY: str(workflow_id),
        _VERSION_KEY: version,
    }


def as_stored(value: Any) -> Any:
    """The JSON value as PostgreSQL's jsonb gives it back: object keys in jsonb's order
    (shorter first, then bytewise), numbers written with an exponent as jsonb's numeric writes
    them (1e+22 comes back an integer), no negative zero. The input a worker runs inline is the
    one a claim would have read, to the key order a template may iterate in."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return {k: as_stored(value[k]) for k in keys}
    if isinstance(value, list):
        return [as_stored(item) for item in value]
    if isinstance(value, float):
        if value == 0:
            return 0.0
        written = json.dumps(value)
        if "e" in written:
            return json.loads(format(Decimal(written), "f"))
    return value


class Definitions:
    """The inline definitions this worker has claimed executions of, by (organization,
    workflow, version): a version's definition never changes. Bounded, least recently used
    first out. `taskloom_run_inline` compares the definition with the row's anyway."""

    def __init__(self, kept: int = DEFINITIONS_KEPT) -> None:
        self._kept = kept
        self._found: OrderedDict[tuple[str, str, int], tuple[dict[str, Any], str]] = OrderedDict()

    def learn(self, data: dict[str, Any], run: Run) -> None:
        """After a claim of a job that carried its input: remember the definition if inline."""
        key = _key(data)
        if key is None or key in self._found or not inline_definition(run.definition):
            return
        text = json.dumps(run.definition)
        if len(text) > _DEFINITION_BYTES:
            return
        self._found[key] = (run.definition, text)
        while len(self._found) > self._kept:
            self._found.popitem(last=False)

    def unclaimed_run(self, data: dict[str, Any]) -> tuple[Run, str] | None:
        """The run of a job that carries its input, with its definition's JSON text, if this
        worker knows the definition; None: it is claimed the usual way."""
        key = _key(data)
        found = self._found.get(key) if key is not None else None
        if found is None:
            return None
        self._found.move_to_end(key)  # type: ignore[arg-type]
        definition, text = found
        try:
            input = as_stored(data[JOB_INPUT_KEY])
        except RecursionError:  # nested deeper than this walk goes: the usual path reads it
            return None
        run = Run(
            execution_id=uuid.UUID(data["execution_id"]),
            org_id=uuid.UUID(data["org_id"]),
            definition=definition,
            input=input,
        )
        return run, text


def _key(data: dict[str, Any]) -> tuple[str, str, int] | None:
    if not isinstance(data.get(JOB_INPUT_KEY), dict):
        return None
    try:
        return str(data["org_id"]), str(data[_WORKFLOW_KEY]), int(data[_VERSION_KEY])
    except (KeyError, TypeError, ValueError):
        return None


async def forget_input(job: Job) -> None:
    """The job runs the usual way: its data becomes the usual job's, without the input (one
    Redis call; if it fails, the input stays until the job is removed, as GDPR erasure removes
    failed ones)."""
    if JOB_INPUT_KEY not in job.data:
        return
    try:
        await job.updateData({k: v for k, v in job.data.items() if k not in _CARRIED})
    except RedisError as error:
        log.warning("job_input_not_dropped", error=repr(error))
