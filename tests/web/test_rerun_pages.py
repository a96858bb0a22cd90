"""Re-run from step in the UI, against a real worker: a finished execution's page offers the
form (to members, with its steps and both definitions), posting it with the CSRF token starts
a new execution that keeps the upstream outputs and links both ways, and viewers get neither
the form nor the action."""

from __future__ import annotations

import httpx

from tests.factories import Account, add_member
from tests.web.conftest import Browser
from tests.web.support import browser_for, post_form, text_of
from tests.workers import (
    CountingServer,
    StartWorker,
    create_workflow,
    execute,
    unique_key,
    wait_for_status,
)


async def test_re_run_from_step_starts_a_linked_execution_keeping_upstream_outputs(
    api: httpx.AsyncClient,
    owner: Account,
    queue_browser: Browser,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    first, second = unique_key("ui-first"), unique_key("ui-second")
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {"id": "fetch", "type": "http", "args": {"url": counting_server.url(first)}},
            {"id": "send", "type": "http", "args": {"url": counting_server.url(second)}},
            {
                "id": "report",
                "type": "transform",
                "args": {
                    "value": "{{ [steps.fetch.output.body.call, steps.send.output.body.call] }}"
                },
            },
        ],
    )
    start_worker()
    old_id = await execute(api, owner, workflow_id)
    assert (await wait_for_status(api, owner, old_id))["status"] == "succeeded"

    owner_ui = await browser_for(queue_browser, owner)
    path = f"/ui/executions/{old_id}"
    page = await owner_ui.get(path)
    assert page.status_code == 200
    assert "Re-run from step" in text_of(page)
    assert f'action="/ui/executions/{old_id}/rerun"' in page.text
    for step in ("fetch", "send", "report"):
        assert f'<option value="{step}">{step}</option>' in page.text
    assert 'name="definition" value="current"' in page.text

    posted = await post_form(
        owner_ui,
        f"/ui/executions/{old_id}/rerun",
        {"from_step": "send", "definition": "original"},
        from_page=path,
    )
    assert posted.status_code == 303, posted.text
    location = posted.headers["location"]
    assert location.startswith("/ui/executions/")
    assert location.endswith("?notice=execution-rerun")
    new_id = location.removeprefix("/ui/executions/").split("?")[0]
    assert new_id != old_id
    new = await wait_for_status(api, owner, new_id)
    assert new["status"] == "succeeded", new
    assert new["retry_of"] == old_id
    assert [counting_server.calls(first), counting_server.calls(second)] == [1, 2]
    assert new["output"] == [1, 2]
    assert {s["step_id"] for s in new["steps"] if s["reused"]} == {"fetch"}
    assert "Kept: its recorded result was copied" in text_of(await owner_ui.get(location))

    shown = text_of(await owner_ui.get(location))
    assert "Re-run queued" in shown
    assert f"Re-run of execution {old_id}" in shown
    assert f"Re-runs execution {new_id}" in text_of(await owner_ui.get(path))

    # A bad choice is refused with a page, not a 5xx; an unknown step names itself.
    bad = await post_form(
        owner_ui, f"/ui/executions/{old_id}/rerun", {"definition": "latest"}, from_page=path
    )
    assert bad.status_code == 400
    unknown = await post_form(
        owner_ui, f"/ui/executions/{old_id}/rerun", {"from_step": "nope"}, from_page=path
    )
    assert unknown.status_code == 422
    assert "'nope' is not a step" in text_of(unknown)

    # A viewer sees the execution but no form, and cannot post one.
    viewer = await add_member(api, owner, role="viewer")
    viewer_ui = await browser_for(queue_browser, viewer)
    theirs = await viewer_ui.get(path)
    assert theirs.status_code == 200
    assert "Re-run from step" not in text_of(theirs)
    refused = await post_form(
        viewer_ui, f"/ui/executions/{old_id}/rerun", {"from_step": "send"}, from_page=path
    )
    assert refused.status_code == 403
    assert counting_server.calls(second) == 2
