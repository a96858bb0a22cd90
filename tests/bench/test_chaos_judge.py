"""bench/chaos.py's judge, on made-up calls: a duplicated call is explained only by an
interruption overlapping the time between it and the previous call of its key, within the
interruption's capacity and at most once per key; for-each items (`<execution>:<step>:<index>`)
are keys of their own; missing_calls expects every item of a succeeded DAG execution."""

from __future__ import annotations

from bench.chaos import (
    DAG_ITEMS,
    Call,
    CallRecorder,
    Interruption,
    called_after_finish,
    chain_workflow,
    dag_workflow,
    judge,
    missing_calls,
)

EXECUTION = "0b5e2a52-51d1-4c9a-9d0e-6f1f3d5c1a10"


def _call(key: str, arrived: float, unix: float = 0.0) -> Call:
    return Call(f"{EXECUTION}:{key}", arrived, arrived + 0.03, arrived_unix=unix)


def _kill(at: float, capacity: int = 10) -> Interruption:
    return Interruption("SIGKILL", at, at, capacity, pid=1)


def test_an_item_called_again_after_a_kill_is_explained_and_one_without_is_not() -> None:
    calls = [
        _call("each:0", 1.0),
        _call("each:0", 5.0),  # re-run after the kill at 1.01
        _call("each:1", 12.0),
        _call("each:1", 13.0),  # no interruption between the two calls
        _call("each:2", 1.0),  # called once
    ]
    duplicates = judge(calls, [_kill(1.01)], end=20.0)
    assert (duplicates.keys, duplicates.duplicated) == (3, 2)
    assert duplicates.explained == {"SIGKILL": 1}
    assert duplicates.unexplained == [f"{EXECUTION}:each:1"]


def test_one_interruption_explains_one_duplicate_per_key_and_at_most_its_capacity() -> None:
    # A key called three times while one worker was stopping (a SIGTERM until its exit, which
    # overlaps both gaps): the stop explains one of the two duplicates, not both.
    thrice = [_call("f1", 1.0), _call("f1", 1.5), _call("f1", 2.0)]
    stopping = Interruption("SIGTERM", 1.2, 1.8, 10, pid=2)
    duplicates = judge(thrice, [stopping], end=10.0)
    assert duplicates.duplicated == 2
    assert duplicates.explained == {"SIGTERM": 1}
    assert duplicates.unexplained == [f"{EXECUTION}:f1"]
    # A second interruption explains the other.
    assert judge(thrice, [stopping, _kill(1.6)], end=10.0).unexplained == []
    # Three items cut by a kill of capacity 2: one stays unexplained; two kills explain all.
    items = [_call(f"each:{i}", t) for i in range(3) for t in (1.0, 4.0)]
    assert judge(items, [_kill(1.01, capacity=2)], end=10.0).unexplained_count == 1
    assert judge(items, [_kill(1.01, capacity=2), _kill(1.02)], end=10.0).unexplained == []


def test_missing_calls_expects_each_step_and_item_of_the_workflow() -> None:
    recorder = CallRecorder()
    try:
        dag = dag_workflow(recorder, 0.01, "1s")
        without_wait = dag_workflow(recorder, 0.01, None)
        chain = chain_workflow(recorder, 2, 0.01)
    finally:
        recorder.close()
    assert [s["id"] for s in dag.definition["steps"]] == [
        "start",
        "f1",
        "f2",
        "f3",
        "each",
        "pause",
        "join",
    ]
    assert dag.definition["steps"][-1]["needs"] == ["f1", "f2", "f3", "pause"]
    assert dag.width == 6  # the fan-out of 3 and 3 items at a time
    assert len(dag.keys) == 4 + DAG_ITEMS + 1  # start, the fan-out, the items, the join
    calls = [_call(key, 1.0) for key in dag.keys if key != "each:3"]
    assert missing_calls(calls, [EXECUTION], dag.keys) == [f"{EXECUTION}:each:3"]
    assert missing_calls(calls, [EXECUTION], chain.keys) == [
        f"{EXECUTION}:s1",
        f"{EXECUTION}:s2",
    ]
    assert "pause" not in [s["id"] for s in without_wait.definition["steps"]]
    assert without_wait.definition["steps"][-1]["needs"] == ["f1", "f2", "f3", "each"]


def test_a_call_after_its_row_was_finished_is_a_finished_item_run_again() -> None:
    finished = {f"{EXECUTION}:each:0": 1_000.5, f"{EXECUTION}:each:1": 1_000.5}
    calls = [
        _call("each:0", 1.0, unix=1_000.0),  # the call that finished it
        _call("each:1", 1.0, unix=1_000.0),
        _call("each:1", 2.0, unix=1_000.7),  # after the row was finished
        _call("each:2", 2.0, unix=1_001.0),  # no succeeded row: not judged here
    ]
    assert called_after_finish(calls, finished) == [f"{EXECUTION}:each:1"]
