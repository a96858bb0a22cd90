"""`transform`: its output is its rendered `value` (any JSON: objects, lists, templates that
yield numbers or objects), e.g. to reshape an earlier step's output."""

from __future__ import annotations

from typing import Any, ClassVar

from taskloom.executions.steps.base import StepArgs, StepContext


class TransformArgs(StepArgs):
    value: Any


class TransformStep:
    name: ClassVar[str] = "transform"
    Args: ClassVar[type[StepArgs]] = TransformArgs
    # No I/O: the engine records its run with its result (executions/engine.py).
    without_io: ClassVar[bool] = True

    async def run(self, args: TransformArgs, ctx: StepContext) -> Any:
        return args.value
