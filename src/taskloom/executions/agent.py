"""The `agent` step's loop (ADR 0015): the model answers, calling the organization's tools
through the provider's native tool calling, until it gives a final answer or a bound stops it.

    offer tools ─▶ rebuild from rows ─▶ [pending tool calls] ─▶ model turn ─▶ tool calls ─▶ …
                                                                     └─▶ final answer (JSON checked)

- Tools (`agent_tools.py`): the named connections' tools, under names valid for both APIs
  (`<connection>__<tool>`, ^[a-zA-Z0-9_-]{1,64}$, made unique and mapped back). A write tool is
  offered only with `allow_writes`; called anyway, it gets an error result and never runs.
- Every call goes through `tools.executor.call_tool` (breakers, cache, metrics, credentials,
  argument checks) with the idempotency key `<execution>:<step>:<turn>:<tool_call_id>`.
- Each model turn and tool call is a row (`agent_turns.py`), its end committed before the next
  call is made: held (`_Held`) and written in the transaction that starts the next row, or on
  its own when nothing starts after it (an answer, an error, a stop); its `finished` event goes
  out once it is committed. A job that
  runs the step again rebuilds the conversation from them: finished calls are never made again;
  a call left running is made once more with its key, and a second interruption of it becomes
  an error result for the model.
- Bounds: `max_iterations` model turns (`agent_iteration_limit`), the step's `max_cost_usd`
  (`agent_budget_exhausted`, reserved before each turn) and every budget an `ai` call has.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from opentelemetry.trace import SpanKind, Status, StatusCode

from taskloom.ai.executor import AiCall, AiStepError, parse_json, run_turn
from taskloom.ai.providers.base import Message, ToolCall, ToolResult, ToolSpec
from taskloom.executions import agent_turns
from taskloom.executions.agent_tools import OfferedTool, offered_tools, tool_spec
from taskloom.executions.agent_turns import Place
from taskloom.executions.live import Deltas
from taskloom.executions.models import AgentRecordStatus, AgentTurn
from taskloom.executions.state import redact
from taskloom.executions.steps.base import RetryableStepError, StepContext, StepError
from taskloom.observability import tracing
from taskloom.observability.metrics import AGENT_ITERATIONS, AGENT_STOPS
from taskloom.tools.base import ToolError
from taskloom.tools.executor import call_tool

MAX_RESULT_CHARS = 50_000  # of one tool result, as the model sees it
MAX_EVENT_RESULT_CHARS = 16_000  # of one tool result on the live stream


@dataclass(frozen=True)
class AgentSpec:
    """The agent step's rendered and validated arguments, as the loop needs them."""

    prompt: str
    system: str | None
    model: str | None
    category: str | None
    tools: list[tuple[str, str | None, str | None]]  # (connection, tool, "read_only" | "all")
    allow_writes: bool
    max_iterations: int
    max_cost_usd: Decimal | None
    json_schema: dict[str, Any] | None


@dataclass
class _State:
    messages: list[Message]
    turns: int = 0  # model turns that finished
    tool_calls: int = 0  # tool calls that finished (with a result or an error)
    cost: Decimal = Decimal(0)
    pending: list[ToolCall] = field(default_factory=list)  # the last turn's calls to finish
    final: Any = None  # the final answer's output, when the rows already hold it


_T = TypeVar("_T")


@dataclass(frozen=True)
class _Held:
    """A row's end not written yet: it goes in the transaction that starts the next row (one
    commit instead of two), or on its own; `then` runs once it is committed (the `finished`
    event, progress)."""

    ended: agent_turns.Ended
    then: Callable[[], Awaitable[None]]


class _Stop(Exception):
    def __init__(self, reason: str, error: StepError) -> None:
        self.reason, self.error = reason, error


def _with_ids(calls: tuple[ToolCall, ...], turn: int) -> tuple[ToolCall, ...]:
    """The calls with ids that are there and unique (some compatible servers send none); the
    ids are stored with the turn, so a resumed step sees the same ones."""
    seen: set[str] = set()
    fixed = []
    for index, call in enumerate(calls, start=1):
        call_id = call.id[:100]
        if not call_id or call_id in seen:
            call_id = f"call_{turn}_{index}"
        seen.add(call_id)
        fixed.append(ToolCall(call_id, call.name, call.arguments))
    return tuple(fixed)


def _event_result(output: Any) -> dict[str, Any]:
    """A tool result for a live event: whole when short, else only that it was cut."""
    if len(json.dumps(output, default=str)) <= MAX_EVENT_RESULT_CHARS:
        return {"result": output}
    return {"result_truncated": True}


def _feedback(text: str, schema: dict[str, Any] | None) -> str | None:
    """None when `text` is a fit final answer; else what to tell the model."""
    if schema is None:
        return None
    try:
        parse_json(text, schema)
    except AiStepError as error:
        return f"{error.message}. Answer again with exactly one JSON object that matches it."
    return None


def _final(text: str, spec: AgentSpec) -> Any:
    return parse_json(text, spec.json_schema) if spec.json_schema is not None else text


def _as_result(call_id: str, output: Any, error: dict[str, Any] | None) -> ToolResult:
    if error is not None:
        message = f"{error.get('code', 'error')}: {error.get('message', '')}"
        return ToolResult(call_id, message[:MAX_RESULT_CHARS], is_error=True)
    text = output if isinstance(output, str) else json.dumps(output, default=str)
    if len(text) > MAX_RESULT_CHARS:
        text = text[: MAX_RESULT_CHARS - 12] + "…[truncated]"
    return ToolResult(call_id, text)


def _assistant(row: AgentTurn) -> Message:
    output = row.output or {}
    calls = tuple(
        ToolCall(c["id"], c["name"], c.get("arguments") or {}) for c in output.get("tool_calls", [])
    )
    return Message("assistant", output.get("text") or "", tool_calls=calls)


def rebuild(rows: list[AgentTurn], spec: AgentSpec) -> tuple[_State, dict[int, AgentTurn]]:
    """The conversation as the rows left it, and the rows of the last turn's tool calls by
    their call index (for the calls still to finish)."""
    state = _State(messages=[Message("user", spec.prompt)])
    by_turn: dict[int, dict[int, AgentTurn]] = {}
    for row in rows:
        by_turn.setdefault(row.turn, {})[row.call_index] = row
    last_calls: dict[int, AgentTurn] = {}
    for turn in sorted(by_turn):
        records = by_turn[turn]
        model = records.get(0)
        if model is None or model.status != AgentRecordStatus.SUCCEEDED:
            break  # this turn runs again
        state.turns, state.cost = turn, state.cost + model.cost_usd
        assistant = _assistant(model)
        state.messages.append(assistant)
        if not assistant.tool_calls:
            feedback = _feedback(assistant.content, spec.json_schema)
            if feedback is None:
                state.final = assistant.content
                return state, {}
            state.messages.append(Message("user", feedback))
            continue
        results: list[ToolResult] = []
        state.pending = []
        for index, call in enumerate(assistant.tool_calls, start=1):
            record = records.get(index)
            if record is not None and record.status != AgentRecordStatus.RUNNING:
                state.tool_calls += 1
                results.append(_as_result(call.id, record.output, record.error))
            else:
                state.pending.append(call)
        if state.pending:
            state.messages.append(Message("tool", tool_results=tuple(results)))
            last_calls = records
            break
        state.messages.append(Message("tool", tool_results=tuple(results)))
    return state, last_calls


class AgentLoop:
    """One run of an agent step (or of one for-each item of it)."""

    def __init__(self, ctx: StepContext, spec: AgentSpec) -> None:
        self.ctx, self.spec = ctx, spec
        self.runtime = ctx.require_runtime()
        self.database = self.runtime.database
        self.place = Place(
            org_id=ctx.org_id,
            execution_id=ctx.execution_id,
            step_id=ctx.step_id,
            item_index=ctx.item_index,
            scrub=ctx.scrubbed,
        )
        self._held: _Held | None = None

    async def run(self) -> dict[str, Any]:
        state: _State | None = None
        try:
            named = await offered_tools(
                self.runtime,
                org_id=self.ctx.org_id,
                refs=self.spec.tools,
                allow_writes=self.spec.allow_writes,
            )
            rows = await agent_turns.load(self.database, self.place)
            state, last_calls = rebuild(rows, self.spec)
            if state.final is None:
                await self._loop(state, last_calls, named)
            await self._write_held()
        except _Stop as stop:
            await self._write_held()
            self._stopped(stop.reason, state)
            if state is not None:
                stop.error.details = {**(stop.error.details or {}), **self._summary(state)}
            raise stop.error from None
        except Exception:  # a StepError, or an infrastructure error the engine retries
            await self._write_held_quietly()
            self._stopped("error", state)
            raise
        assert state is not None
        self._stopped("final_answer", state)
        key = "json" if self.spec.json_schema is not None else "text"
        return {key: _final(state.final, self.spec), **self._summary(state)}

    def _take_held(self) -> _Held | None:
        held, self._held = self._held, None
        return held

    async def _start_with_held(
        self, start: Callable[[agent_turns.Ended | None], Awaitable[_T]]
    ) -> _T:
        """A row's start, with the held end (if any) in its transaction; the end's `then` once
        that committed. If it did not, the end stays held: `run` writes it on its own."""
        held = self._take_held()
        try:
            started = await start(held.ended if held is not None else None)
        except BaseException:
            self._held = held
            raise
        if held is not None:
            await held.then()
        return started

    async def _write_held(self) -> None:
        """Commit the held end on its own (nothing starts after it), then run its `then`."""
        held = self._take_held()
        if held is not None:
            await agent_turns.write_ended(self.database, self.place, held.ended)
            await held.then()

    async def _write_held_quietly(self) -> None:
        """`_write_held` on the way out after an error: the error is what the caller sees; an
        end that could not be written leaves its row running, and a job that runs the step
        again makes that call once more (as after a crash)."""
        try:
            await self._write_held()
        except Exception:
            self._held = None

    def _stopped(self, reason: str, state: _State | None) -> None:
        AGENT_STOPS.labels(reason).inc()
        if state is not None:
            AGENT_ITERATIONS.observe(state.turns)

    @staticmethod
    def _summary(state: _State) -> dict[str, Any]:
        return {
            "turns": state.turns,
            "tool_calls": state.tool_calls,
            "cost_usd": str(state.cost.quantize(Decimal("0.000001"))),
        }

    async def _loop(
        self, state: _State, last_calls: dict[int, AgentTurn], named: list[OfferedTool]
    ) -> None:
        by_name = {n.name: n for n in named}
        specs = tuple(tool_spec(n) for n in named if n.offered)
        while True:
            # Checked before a turn's tool calls run: calls the model can no longer read the
            # results of are not made.
            if state.turns >= self.spec.max_iterations:
                raise _Stop(
                    "iteration_limit",
                    StepError(
                        f"the agent took {state.turns} turns without a final answer "
                        f"(max_iterations {self.spec.max_iterations})",
                        code="agent_iteration_limit",
                    ),
                )
            if state.pending:
                await self._tools(state, last_calls, by_name)
            assistant = await self._turn(state, specs)
            if assistant.tool_calls:
                state.pending, last_calls = list(assistant.tool_calls), {}
                continue
            feedback = _feedback(assistant.content, self.spec.json_schema)
            if feedback is None:
                state.final = assistant.content
                return
            state.messages.append(Message("user", feedback))

    async def _turn(self, state: _State, specs: tuple[ToolSpec, ...]) -> Message:
        turn = state.turns + 1
        last = state.messages[-1]
        prompt: Any = None
        if turn == 1:
            prompt = {"system": self.spec.system, "prompt": self.spec.prompt}
        elif last.role == "user":
            prompt = {"prompt": last.content}
        await self._start_with_held(
            lambda ended: agent_turns.model_started(
                self.database, self.place, turn=turn, prompt=prompt, ended=ended
            )
        )
        await self.ctx.emit("agent.turn", {"turn": turn, "phase": "started"})
        deltas = Deltas(self.ctx.emit, {"turn": turn}) if self.ctx.live is not None else None
        call = AiCall(
            org_id=self.ctx.org_id,
            user_id=self.ctx.triggered_by,
            execution_id=self.ctx.execution_id,
            step_id=self.ctx.step_id,
            prompt=self.spec.prompt,
            system=self.spec.system,
            category=self.spec.category,
            model=self.spec.model,
            json_output=self.spec.json_schema is not None,
            json_schema=self.spec.json_schema,
            allow_downgrade=self.spec.model is None,
            on_text=deltas.add if deltas is not None else None,
        )
        started = time.perf_counter()
        try:
            result = await run_turn(
                self.runtime,
                call,
                messages=state.messages,
                tools=specs,
                step_limit_usd=self.spec.max_cost_usd,
            )
        except AiStepError as error:
            detail = {"code": error.code, "message": error.message}
            ended = agent_turns.model_ended(
                self.place,
                turn=turn,
                output=None,
                error=detail,
                duration_ms=round((time.perf_counter() - started) * 1000),
            )
            await agent_turns.write_ended(self.database, self.place, ended)
            await self.ctx.emit("agent.turn", {"turn": turn, "phase": "failed", **detail})
            budget = error.code in ("agent_budget_exhausted", "budget_exhausted")
            kind = RetryableStepError if error.retryable else StepError
            raise _Stop(
                "budget" if budget else "error",
                kind(error.message, code=error.code, details=error.details),
            ) from None
        finally:
            if deltas is not None:
                await deltas.flush()
        calls = _with_ids(result.tool_calls, turn)
        output = {
            "text": result.text,
            "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls],
            "stop_reason": result.stop_reason,
        }
        ended = agent_turns.model_ended(
            self.place,
            turn=turn,
            output=output,
            model=result.model,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            cost_usd=result.cost_usd,
            duration_ms=result.latency_ms,
        )
        state.turns, state.cost = turn, state.cost + result.cost_usd
        finished = {
            "turn": turn,
            "phase": "finished",
            "model": result.model,
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "cost_usd": str(result.cost_usd),
            "stop_reason": result.stop_reason,
            "tool_calls": len(calls),
        }

        async def then() -> None:
            await self.ctx.progressed()
            await self.ctx.emit("agent.turn", finished)

        self._held = _Held(ended, then)
        if not calls or turn >= self.spec.max_iterations:
            await self._write_held()  # no tool call starts after it
        assistant = Message("assistant", result.text, tool_calls=calls)
        state.messages.append(assistant)
        return assistant

    async def _tools(
        self, state: _State, last_calls: dict[int, AgentTurn], by_name: dict[str, OfferedTool]
    ) -> None:
        """Finish the last turn's tool calls, one after the other, in the model's order."""
        assistant = state.messages[-1] if state.messages[-1].role == "assistant" else None
        if assistant is None:  # rebuilt: the results so far follow the assistant's message
            results = list(state.messages.pop().tool_results)
            assistant = state.messages[-1]
        else:
            results = []
        done = {r.tool_call_id for r in results}
        for index, call in enumerate(assistant.tool_calls, start=1):
            if call.id in done:
                continue
            results.append(await self._tool(state, index, call, last_calls.get(index), by_name))
            state.tool_calls += 1
        state.messages.append(Message("tool", tool_results=tuple(results)))
        state.pending = []

    async def _tool(
        self,
        state: _State,
        index: int,
        call: ToolCall,
        previous: AgentTurn | None,
        by_name: dict[str, OfferedTool],
    ) -> ToolResult:
        turn = state.turns
        # `<execution>:<step>:<turn>:<tool_call_id>` (the item's index after the step's id in
        # a for_each item, as in every step's key).
        key = f"{self.ctx.idempotency_key}:{turn}:{call.id}"
        named = by_name.get(call.name)
        event = {"turn": turn, "call_index": index, "tool_call_id": call.id, "tool": call.name}
        if named is not None:
            event["connection"] = named.connection
        if previous is not None and previous.attempts >= 2:
            # Interrupted twice (its worker died both times): not a third call.
            error = {
                "code": "tool_interrupted",
                "message": "the call was interrupted twice and is not made again",
            }
            return await self._refused(turn, index, call, error, event)
        attempts = await self._start_with_held(
            lambda ended: agent_turns.tool_started(
                self.database,
                self.place,
                turn=turn,
                call_index=index,
                tool_call_id=call.id,
                tool_name=call.name,
                connection=named.connection if named is not None else None,
                tool=named.tool.name if named is not None else None,
                idempotency_key=key,
                arguments=call.arguments,
                ended=ended,
            )
        )
        await self.ctx.emit(
            "agent.tool_call",
            {**event, "phase": "started", "attempt": attempts, "arguments": redact(call.arguments)},
        )
        if named is None or not named.offered:
            error = (
                {
                    "code": "tool_not_allowed",
                    "message": f"{call.name} writes, and this agent step does not allow writes "
                    "(allow_writes is false); it was not called",
                }
                if named is not None
                else {"code": "unknown_tool", "message": f"no tool named {call.name!r} is offered"}
            )
            return await self._refused(turn, index, call, error, event)
        started = time.perf_counter()
        output: Any = None
        error_body: dict[str, Any] | None = None
        with tracing.tracer().start_as_current_span(
            f"execute_tool {named.tool.name}",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": named.tool.name,
                "gen_ai.tool.call.id": call.id,
                "gen_ai.tool.type": "function",
                "taskloom.connection": named.connection,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                answer = await call_tool(
                    self.runtime,
                    org_id=self.ctx.org_id,
                    connection_ref=named.connection,
                    tool_name=named.tool.name,
                    args=call.arguments,
                    idempotency_key=key,
                )
                output = answer["result"]
            except ToolError as failure:
                error_body = {"code": failure.code, "message": failure.message}
                span.set_attribute("error.type", failure.code)
                span.set_status(Status(StatusCode.ERROR, failure.code))
        duration = round((time.perf_counter() - started) * 1000)
        ended = agent_turns.tool_ended(
            self.place,
            turn=turn,
            call_index=index,
            output=output if error_body is None else None,
            error=error_body,
            duration_ms=duration,
        )
        finished = {
            **event,
            "phase": "finished",
            "ok": error_body is None,
            "code": None if error_body is None else error_body["code"],
            "duration_ms": duration,
            **(_event_result(output) if error_body is None else {}),
        }

        async def then() -> None:
            await self.ctx.progressed()
            await self.ctx.emit("agent.tool_call", finished)

        self._held = _Held(ended, then)  # written with the next start (or by `run`)
        return _as_result(call.id, output, error_body)

    async def _refused(
        self,
        turn: int,
        index: int,
        call: ToolCall,
        error: dict[str, Any],
        event: dict[str, Any],
    ) -> ToolResult:
        ended = agent_turns.tool_ended(
            self.place, turn=turn, call_index=index, error=error, duration_ms=0
        )
        finished = {**event, "phase": "finished", "ok": False, "code": error["code"]}

        async def then() -> None:
            await self.ctx.emit("agent.tool_call", {**finished, "duration_ms": 0})

        if self._held is not None:  # the end before it, not written yet: on its own first
            await self._write_held()
        self._held = _Held(ended, then)  # written with the next start (or by `run`)
        return _as_result(call.id, None, error)
