"""People's side of approvals in the UI, against a real worker: the execution page lists what
it waits for and shows Approve / Reject to approvers only, the approval's own page (the link
of `approval.requested`) needs sign-in and authorizes nothing, a decision posted from either
page resumes the execution, and the graph shows for-each progress and links sub-workflows."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import httpx

from tests.factories import PASSWORD, Account, add_member
from tests.web.conftest import Browser
from tests.web.support import browser_for, post_form, text_of
from tests.web.test_graph_pages import SVG, _drawings, _nodes
from tests.workers import (
    StartWorker,
    create_workflow,
    execute,
    wait_for_status,
    waiting_for_approval,
)


async def _page(browser: httpx.AsyncClient, path: str) -> httpx.Response:
    """A page as a person sees it: 200, and nothing the CSP would block (checked as the graph
    pages' tests do)."""
    page = await browser.get(path)
    _drawings(page)
    return page


async def _until(
    api: httpx.AsyncClient, account: Account, execution_id: str, ready: Any, within: float = 15
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        body: dict[str, Any] = (
            await api.get(f"/api/executions/{execution_id}", headers=account.headers)
        ).json()
        if ready(body):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)


def _badge(page: httpx.Response, step_id: str) -> str | None:
    """The for-each progress written in a step's box of the graph."""
    for g in _drawings(page)["graph"].iter(f"{SVG}g"):
        if g.attrib.get("data-step") == step_id:
            found = [t.text for t in g.iter(f"{SVG}text") if t.attrib.get("class") == "node-badge"]
            return found[0] if found else None
    raise AssertionError(f"no node {step_id}")


async def test_only_approvers_get_the_buttons_and_approving_on_the_page_resumes_the_execution(
    api: httpx.AsyncClient, owner: Account, queue_browser: Browser, start_worker: StartWorker
) -> None:
    member = await add_member(api, owner, role="member")
    execution_id, waiting = await waiting_for_approval(api, owner, start_worker, "<b>v2</b>")
    [asked] = waiting["approvals"]
    approval_id = asked["id"]
    approve_path = f"/ui/approvals/{approval_id}/approve"

    # The link opens nothing by itself: signed out, it leads to sign-in and back.
    stranger = await queue_browser()
    sent_away = await stranger.get(f"/ui/approvals/{approval_id}")
    assert sent_away.status_code == 303
    assert sent_away.headers["location"] == (
        "/ui/login?next=" + quote(f"/ui/approvals/{approval_id}", safe="")
    )
    back = await post_form(
        stranger,
        "/ui/login",
        {"email": owner.email, "password": PASSWORD, "next": f"/ui/approvals/{approval_id}"},
        from_page=sent_away.headers["location"],
    )
    assert back.status_code == 303
    assert back.headers["location"] == f"/ui/approvals/{approval_id}"

    owner_ui = await browser_for(queue_browser, owner)
    member_ui = await browser_for(queue_browser, member)
    page = await _page(owner_ui, f"/ui/executions/{execution_id}")
    words = text_of(page)
    assert "Status: waiting" in words
    assert "Wakes" in words  # at the approval's timeout
    assert "Waiting for approval" in words
    assert "Ship <b>v2</b>?" in words
    assert "<b>v2</b>" not in page.text  # the tenant's text is escaped
    assert "admins and higher roles" in words
    assert f'formaction="{approve_path}"' in page.text
    assert 'http-equiv="refresh"' not in page.text  # a reload would wipe a comment being typed
    assert _nodes(_drawings(page)["graph"])["ok"] == "node type-approval status-waiting"
    own = await _page(owner_ui, f"/ui/approvals/{approval_id}")
    assert "Your decision" in text_of(own)
    assert f'formaction="{approve_path}"' in own.text

    # A member is not an approver: no buttons on either page, and a post is refused.
    for path in (f"/ui/executions/{execution_id}", f"/ui/approvals/{approval_id}"):
        theirs = await _page(member_ui, path)
        assert "formaction=" not in theirs.text, path
        assert "Ship <b>v2</b>?" in text_of(theirs)
    assert "not one of this approval's approvers" in text_of(
        await member_ui.get(f"/ui/approvals/{approval_id}")
    )
    listed = await _page(member_ui, "/ui/approvals")
    assert f'href="/ui/approvals/{approval_id}"' in listed.text
    assert "not an approver" in text_of(listed)
    refused = await post_form(
        member_ui, approve_path, {"comment": "me too"}, from_page="/ui/approvals"
    )
    assert refused.status_code == 403
    assert "Not allowed" in refused.text
    assert "not one of this approval's approvers" in text_of(refused)
    # Without the CSRF token even the approver's post is refused.
    forged = await owner_ui.post(approve_path, data={"comment": "forged"})
    assert forged.status_code == 403
    assert "Form expired" in forged.text
    still = await api.get("/api/approvals", headers=owner.headers)
    assert [(a["id"], a["status"]) for a in still.json()] == [(approval_id, "pending")]

    decided = await post_form(
        owner_ui,
        approve_path,
        {"comment": "go <now>", "return_to": "approval"},
        from_page=f"/ui/approvals/{approval_id}",
    )
    assert decided.status_code == 303, decided.text
    assert decided.headers["location"] == f"/ui/approvals/{approval_id}?notice=approval-approved"
    done = await wait_for_status(api, owner, execution_id, within=15)
    assert done["status"] == "succeeded", done
    assert done["output"] == {"approved": True}
    decision = next(s for s in done["steps"] if s["step_id"] == "ok")["output"]
    assert (decision["by"], decision["comment"]) == (str(owner.user_id), "go <now>")

    shown = await _page(owner_ui, decided.headers["location"])
    words = text_of(shown)
    assert "Approved. The execution goes on." in words
    assert "Status: approved" in words
    assert "go <now>" in words
    assert "formaction=" not in shown.text
    after = text_of(await _page(owner_ui, f"/ui/executions/{execution_id}"))
    assert "Decided approvals" in after
    assert "Waiting for approval" not in after
    # Deciding twice is a conflict, shown as the UI's error page.
    again = await post_form(
        owner_ui,
        f"/ui/approvals/{approval_id}/reject",
        {},
        from_page=f"/ui/approvals/{approval_id}",
    )
    assert again.status_code == 409
    assert "already approved" in text_of(again)
    assert "No approval is waiting" in text_of(await _page(owner_ui, "/ui/approvals"))


async def test_for_each_approvals_show_progress_and_sub_workflows_link_both_ways(
    api: httpx.AsyncClient, owner: Account, queue_browser: Browser, start_worker: StartWorker
) -> None:
    child_workflow = await create_workflow(
        api,
        owner,
        [{"id": "hold", "type": "approval", "args": {"approvers": {"role": "owner"}}}],
        name="child",
    )
    parent_workflow = await create_workflow(
        api,
        owner,
        [
            {
                "id": "each",
                "type": "approval",
                "for_each": "{{ input.names }}",
                "args": {
                    "approvers": {"users": [str(owner.user_id)]},
                    "message": "Invite {{ item }}?",
                },
            },
            {"id": "sub", "type": "workflow", "args": {"workflow": child_workflow, "input": {}}},
            {"id": "done", "type": "transform", "needs": ["each", "sub"], "args": {"value": 1}},
        ],
        name="parent",
    )
    start_worker()
    parent_id = await execute(api, owner, parent_workflow, {"names": ["ann", "bob"]})
    parked = await _until(
        api,
        owner,
        parent_id,
        lambda b: b["status"] == "waiting" and len(b["approvals"]) == 2,
    )
    child_id = next(s for s in parked["steps"] if s["step_id"] == "sub")["child_execution_id"]
    assert child_id
    child = await wait_for_status(api, owner, child_id, {"waiting"}, within=15)

    owner_ui = await browser_for(queue_browser, owner)
    page = await _page(owner_ui, f"/ui/executions/{parent_id}")
    nodes = _nodes(_drawings(page)["graph"])
    assert nodes["each"] == "node type-approval status-waiting"
    assert nodes["sub"] == "node type-workflow status-waiting"
    assert _badge(page, "each") == "0/2"
    words = text_of(page)
    assert "Items: 0 of 2 done" in words
    assert "Invite ann?" in words
    assert "Invite bob?" in words
    assert "Wakes" in words  # at the approvals' timeout
    assert f'href="/ui/executions/{child_id}"' in page.text
    assert "Sub-workflow executions" in words
    child_page = await _page(owner_ui, f"/ui/executions/{child_id}")
    assert f'href="/ui/executions/{parent_id}"' in child_page.text
    assert "Started by" in text_of(child_page)
    [hold] = child["approvals"]

    # Item 0 approved from the execution page: back there, and the item's run finishes.
    first = next(a for a in parked["approvals"] if a["item_index"] == 0)
    decided = await post_form(
        owner_ui,
        f"/ui/approvals/{first['id']}/approve",
        {"return_to": "execution"},
        from_page=f"/ui/executions/{parent_id}",
    )
    assert decided.status_code == 303, decided.text
    assert decided.headers["location"] == f"/ui/executions/{parent_id}?notice=approval-approved"
    await _until(
        api,
        owner,
        parent_id,
        lambda b: next(s for s in b["steps"] if s["step_id"] == "each")["items"]["succeeded"] == 1,
    )
    assert _badge(await _page(owner_ui, f"/ui/executions/{parent_id}"), "each") == "1/2"

    second = next(a for a in parked["approvals"] if a["item_index"] == 1)
    for path, verb in (
        (f"/ui/approvals/{second['id']}", "reject"),
        (f"/ui/approvals/{hold['id']}", "approve"),
    ):
        response = await post_form(owner_ui, f"{path}/{verb}", {}, from_page=path)
        assert response.status_code == 303, response.text
    done = await wait_for_status(api, owner, parent_id, within=20)
    assert done["status"] == "succeeded", done
    each = next(s for s in done["steps"] if s["step_id"] == "each")
    assert [o["approved"] for o in each["output"]] == [True, False]
    final = await _page(owner_ui, f"/ui/executions/{parent_id}")
    assert _badge(final, "each") == "2/2"
    assert "Decided approvals" in text_of(final)
