"""bench/n8n.py's own logic, without installing n8n: the side-by-side table (ratios Taskloom/n8n
per round and their medians), that its defaults match the Taskloom side it is compared with, and
that the workflow file is the one the script calls (its id, its webhook, `doubled = n * 2`)."""

from __future__ import annotations

import json

from bench import n8n, queue_throughput


def _n8n_run(per_s: float, server_ms: float) -> dict[str, object]:
    return {"per_s": per_s, "cpu_ms_per_execution": {"server_ms": server_ms}}


def _taskloom_run(per_s: float, server_ms: float) -> dict[str, object]:
    return {"e2e_per_s": per_s, "cpu_ms_per_execution": {"server_ms": server_ms}}


def test_comparison_gives_taskloom_over_n8n_per_round_and_the_medians() -> None:
    table = n8n.compare(
        [_n8n_run(100, 10.0), _n8n_run(50, 12.0), _n8n_run(80, 11.0)],
        [_taskloom_run(300, 3.0), _taskloom_run(200, 6.0), _taskloom_run(160, 5.5)],
    )

    assert [r["ratio_per_s"] for r in table["rounds"]] == [3.0, 4.0, 2.0]
    assert [r["ratio_server_ms"] for r in table["rounds"]] == [0.3, 0.5, 0.5]
    assert table["medians"] == {
        "n8n_per_s": 80,
        "taskloom_per_s": 200,
        "ratio_per_s": 3.0,
        "n8n_server_ms": 11.0,
        "taskloom_server_ms": 5.5,
        "ratio_server_ms": 0.5,
    }


def test_defaults_match_the_taskloom_side_and_taskloom_can_be_left_out() -> None:
    args = n8n.parse_args([])

    assert args.connections == queue_throughput.IN_FLIGHT
    assert args.requests == 2000  # queue_throughput.py's --executions default
    assert args.with_taskloom
    assert args.rounds == 3
    assert not n8n.parse_args(["--no-with-taskloom"]).with_taskloom


def test_workflow_file_is_webhook_then_doubled_under_the_ids_the_script_uses() -> None:
    workflow = json.loads(n8n.WORKFLOW.read_text())
    webhook, edit = workflow["nodes"]

    assert workflow["id"] == n8n.WORKFLOW_ID
    assert webhook["type"] == "n8n-nodes-base.webhook"
    assert webhook["parameters"]["path"] == n8n.WEBHOOK_PATH
    assert webhook["parameters"]["responseMode"] == "lastNode"
    assert edit["type"] == "n8n-nodes-base.set"
    (assignment,) = edit["parameters"]["assignments"]["assignments"]
    assert (assignment["name"], assignment["value"]) == ("doubled", "={{ $json.body.n * 2 }}")
    assert workflow["connections"]["Webhook"]["main"][0][0]["node"] == edit["name"]
