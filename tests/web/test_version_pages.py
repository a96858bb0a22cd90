"""A workflow's History tab: its versions newest first with who saved them and their note, the
diff between any two (escaped), and a Restore button for members (a CSRF-protected form) that
brings a version back as a new one; viewers read only; the edit form's change note lands in
the version it stores."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from taskloom.runtime import Runtime
from tests.factories import Account, add_member
from tests.triggers.schedule_support import delete_all_schedules
from tests.web.conftest import Browser
from tests.web.support import browser_for, csrf_of, post_form, text_of

STEP = {"id": "a", "type": "transform", "args": {"value": 1}}
# Text that would be markup if the page did not escape it.
SCRIPT = "<script>alert(1)</script>"


@pytest.fixture(autouse=True)
async def _no_schedule_outlives_its_test(runtime: Runtime) -> AsyncIterator[None]:
    yield
    await delete_all_schedules(runtime)


def _body(name: str, value: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "definition": {"steps": [{**STEP, "args": {"value": value}}]}, **extra}


async def _workflow_with_three_versions(client: httpx.AsyncClient, owner: Account) -> str:
    created = await client.post(
        "/api/workflows", json=_body("wf", 1, message="first"), headers=owner.headers
    )
    workflow_id = str(created.json()["id"])
    for name, value, note in (("wf", SCRIPT, "scripted"), ("wf", 3, "third")):
        saved = await client.put(
            f"/api/workflows/{workflow_id}",
            json=_body(name, value, message=note),
            headers=owner.headers,
        )
        assert saved.status_code == 200, saved.text
    return workflow_id


def _version_rows(page: httpx.Response) -> list[str]:
    return re.findall(r'<tr id="version-(\d+)">', page.text)


async def test_the_history_lists_versions_newest_first_with_notes_and_the_latest_diff(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow_with_three_versions(client, owner)
    page = await owner_browser.get(f"/ui/workflows/{workflow_id}/versions")
    assert page.status_code == 200, page.text
    assert _version_rows(page) == ["3", "2", "1"]
    shown = text_of(page)
    assert "3 (current)" in shown
    for note in ("first", "scripted", "third"):
        assert note in shown
    assert "Owner" in page.text.split('id="version-1"')[1].split("</tr>")[0]  # by name
    assert 'aria-current="page">History</a>' in page.text
    # By default: the newest version against the one before, each line marked.
    diff = page.text.split('id="diff"')[1].split("</pre>")[0]
    assert '<span class="diff-file">--- version 2\n</span>' in diff
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f'<span class="diff-del">-      value: {escaped}\n</span>' in diff
    assert '<span class="diff-add">+      value: 3\n</span>' in diff
    assert SCRIPT not in page.text  # escaped everywhere
    # Members see a Restore button on every version but the current one.
    assert page.text.count("/restore") == 2
    assert 'name="csrf_token"' in page.text


async def test_any_two_versions_are_compared_and_equal_ones_say_so(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow_with_three_versions(client, owner)
    path = f"/ui/workflows/{workflow_id}/versions"
    page = await owner_browser.get(path, params={"from": "1", "to": "3"})
    diff = page.text.split('id="diff"')[1].split("</pre>")[0]
    assert "--- version 1" in diff
    assert '<span class="diff-del">-      value: 1\n</span>' in diff
    assert '<span class="diff-add">+      value: 3\n</span>' in diff
    same = await owner_browser.get(path, params={"from": "2", "to": "2"})
    assert 'id="diff-empty"' in same.text
    missing = await owner_browser.get(path, params={"from": "1", "to": "9"})
    assert missing.status_code == 200
    assert "the workflow has no version 9" in text_of(missing)
    ignored = await owner_browser.get(path, params={"from": "x", "to": "-1"})
    assert ignored.status_code == 200  # not numbers: the default comparison


async def test_a_member_restores_a_version_with_the_form_and_csrf(
    client: httpx.AsyncClient, new_browser: Browser, owner: Account
) -> None:
    workflow_id = await _workflow_with_three_versions(client, owner)
    member = await add_member(client, owner, role="member")
    browser = await browser_for(new_browser, member)
    path = f"/ui/workflows/{workflow_id}/versions"

    forged = await browser.post(f"{path}/1/restore", data={})  # no CSRF token
    assert forged.status_code == 403
    assert (await client.get(f"/api/workflows/{workflow_id}", headers=owner.headers)).json()[
        "version"
    ] == 3

    restored = await post_form(browser, f"{path}/1/restore", {}, from_page=path)
    assert restored.status_code == 303, restored.text
    assert restored.headers["location"] == f"{path}?notice=version-restored"
    workflow = (await client.get(f"/api/workflows/{workflow_id}", headers=owner.headers)).json()
    assert (workflow["version"], workflow["definition"]["steps"][0]["args"]) == (4, {"value": 1})
    after = await browser.get(restored.headers["location"])
    assert _version_rows(after) == ["4", "3", "2", "1"]
    assert "Restored version 1 (restored version 1)" in text_of(after)
    assert "Version restored" in text_of(after)


async def test_a_restore_needing_an_admin_shows_why_and_changes_nothing(
    client: httpx.AsyncClient, new_browser: Browser, owner: Account
) -> None:
    workflow_id = await _workflow_with_three_versions(client, owner)
    hook = await client.post(
        f"/api/workflows/{workflow_id}/triggers",
        json={"kind": "webhook", "verification": "token"},
        headers=owner.headers,
    )
    assert hook.status_code == 201, hook.text
    await client.put(f"/api/workflows/{workflow_id}", json=_body("wf", 4), headers=owner.headers)
    member = await add_member(client, owner, role="member")
    browser = await browser_for(new_browser, member)
    path = f"/ui/workflows/{workflow_id}/versions"
    refused = await post_form(browser, f"{path}/3/restore", {}, from_page=path)
    assert refused.status_code == 403
    assert "webhook triggers and their secrets need the admin role" in text_of(refused)
    assert _version_rows(refused) == ["4", "3", "2", "1"]
    workflow = (await client.get(f"/api/workflows/{workflow_id}", headers=owner.headers)).json()
    assert workflow["version"] == 4


async def test_an_admins_restore_shows_a_recreated_webhook_triggers_secret_once(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow_with_three_versions(client, owner)
    hook = await client.post(
        f"/api/workflows/{workflow_id}/triggers",
        json={"kind": "webhook", "verification": "token"},
        headers=owner.headers,
    )
    await client.put(f"/api/workflows/{workflow_id}", json=_body("wf", 4), headers=owner.headers)
    await client.delete(f"/api/triggers/{hook.json()['id']}", headers=owner.headers)
    path = f"/ui/workflows/{workflow_id}/versions"
    page = await post_form(owner_browser, f"{path}/4/restore", {}, from_page=path)
    assert page.status_code == 200, page.text
    [trigger] = (
        await client.get(f"/api/workflows/{workflow_id}/triggers", headers=owner.headers)
    ).json()
    secret = re.search(
        rf'id="secret-{trigger["id"]}" class="code" readonly value="([^"]+)"', page.text
    )
    assert secret, page.text
    started = await client.post(
        f"/hooks/{trigger['id']}", json={}, headers={"Authorization": f"Bearer {secret.group(1)}"}
    )
    assert started.status_code == 202, started.text
    again = await owner_browser.get(path)
    assert secret.group(1) not in again.text  # shown once


async def test_a_viewer_reads_the_history_without_restore_buttons(
    client: httpx.AsyncClient, new_browser: Browser, owner: Account
) -> None:
    workflow_id = await _workflow_with_three_versions(client, owner)
    viewer = await add_member(client, owner, role="viewer")
    browser = await browser_for(new_browser, viewer)
    path = f"/ui/workflows/{workflow_id}/versions"
    page = await browser.get(path)
    assert page.status_code == 200
    assert _version_rows(page) == ["3", "2", "1"]
    assert "/restore" not in page.text
    token = csrf_of(await browser.get("/ui/privacy"))
    refused = await browser.post(f"{path}/1/restore", data={"csrf_token": token})
    assert refused.status_code == 403


async def test_the_edit_forms_change_note_is_kept_with_the_version(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    workflow_id = await _workflow_with_three_versions(client, owner)
    path = f"/ui/workflows/{workflow_id}"
    saved = await post_form(
        owner_browser,
        path,
        {
            "name": "wf",
            "description": "",
            "definition": '{"steps": [{"id": "a", "type": "transform", "args": {"value": 5}}]}',
            "message": "from the form",
        },
    )
    assert saved.status_code == 303, saved.text
    version = await client.get(f"/api/workflows/{workflow_id}/versions/4", headers=owner.headers)
    assert version.json()["message"] == "from the form"
    assert version.json()["created_by"] == str(owner.user_id)


async def test_a_save_after_someone_elses_is_refused_and_keeps_what_was_typed(
    client: httpx.AsyncClient, owner_browser: httpx.AsyncClient, owner: Account
) -> None:
    created = await client.post("/api/workflows", json=_body("wf", 1), headers=owner.headers)
    workflow_id = created.json()["id"]
    path = f"/ui/workflows/{workflow_id}"
    form_page = await owner_browser.get(path)
    assert 'name="version" value="1"' in form_page.text
    # Someone else saves in the meantime.
    await client.put(path.replace("/ui/", "/api/"), json=_body("theirs", 2), headers=owner.headers)
    mine = '{"steps": [{"id": "a", "type": "transform", "args": {"value": 9}}]}'
    refused = await owner_browser.post(
        path,
        data={
            "csrf_token": csrf_of(form_page),
            "version": "1",
            "name": "mine",
            "description": "",
            "definition": mine,
        },
    )
    assert refused.status_code == 412, refused.text
    assert "the workflow is at version 2" in text_of(refused)
    assert '"value": 9' in refused.text.replace("&#34;", '"')  # what was typed is kept
    assert 'name="version" value="2"' in refused.text  # saving again overwrites, knowingly
    current = (await client.get(f"/api/workflows/{workflow_id}", headers=owner.headers)).json()
    assert (current["version"], current["name"]) == (2, "theirs")
