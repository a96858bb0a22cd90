"""The five workflow templates (docs/WORKFLOWS-AS-CODE.md, Templates): each is created through
the API from its shipped file, started as it would be (webhook templates through a signed
`POST /hooks/{id}`), run by a real `taskloom worker`, and checked against the suite's fakes
(GitHub, Linear, Notion, Anthropic, a webhook receiver, the approvals API). Also
`taskloom workflows init` (the UI's "New workflow" page: tests/web/test_template_pages.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import standardwebhooks

from taskloom.workflows import templates
from taskloom.workflows.files import WorkflowFile
from tests.cli_support import clean_env, run_taskloom
from tests.factories import Account
from tests.fakes.ai_apis import FakeAnthropic
from tests.fakes.receiver import Receiver
from tests.fakes.tool_apis import FakeGitHub, FakeLinear, FakeNotion
from tests.workers import StartWorker, execute, wait_for_status

NAMES = [
    "github-issue-triage",
    "linear-to-github",
    "notion-daily-digest",
    "two-step-approval",
    "webhook-ai-router",
]


def test_five_templates_are_shipped_valid_and_use_no_inline_token() -> None:
    shipped = templates.available()
    assert list(shipped) == NAMES
    for name, template in shipped.items():
        assert template.workflow.key == name
        assert template.workflow.description
        text = template.text.lower()
        for token_like in ("ghp_", "lin_api_", "secret_", "sk-ant", "bearer ey"):
            assert token_like not in text, (name, token_like)


async def _create(api: httpx.AsyncClient, owner: Account, name: str) -> WorkflowFile:
    workflow = templates.available()[name].workflow
    created = await api.post(
        "/api/workflows",
        json={
            "key": workflow.key,
            "name": workflow.name,
            "description": workflow.description,
            "definition": workflow.definition.stored(),
        },
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    assert created.json()["warnings"] == [] or name == "webhook-ai-router"
    return workflow.model_copy(update={"key": created.json()["id"]})  # key holds the id here


async def _connect(api: httpx.AsyncClient, owner: Account, body: dict[str, Any]) -> None:
    response = await api.post("/api/connections", json=body, headers=owner.headers)
    assert response.status_code == 201, response.text


async def _claude(api: httpx.AsyncClient, owner: Account, fake: FakeAnthropic) -> None:
    await _connect(
        api,
        owner,
        {
            "provider": "anthropic",
            "name": "claude",
            "base_url": fake.base_url,
            "credentials": {"api_key": fake.api_key},
        },
    )


async def _github(api: httpx.AsyncClient, owner: Account, fake: FakeGitHub) -> None:
    await _connect(
        api,
        owner,
        {
            "provider": "github",
            "name": "github",
            "base_url": fake.base_url,
            "credentials": {"token": fake.token},
            "config": {"owner": "octocat", "repo": "hello-world"},
        },
    )


async def _webhook(
    api: httpx.AsyncClient, owner: Account, workflow_id: str, template: WorkflowFile
) -> tuple[str, str]:
    """The template's webhook trigger, made as a push would: its id and secret."""
    (trigger,) = template.triggers
    body = trigger.model_dump(mode="json")
    created = await api.post(
        f"/api/workflows/{workflow_id}/triggers", json=body, headers=owner.headers
    )
    assert created.status_code == 201, created.text
    return created.json()["id"], created.json()["secret"]


def _issues(fake: FakeGitHub) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = fake.repos[("octocat", "hello-world")]["items"]
    return items


def _label_names(issue: dict[str, Any]) -> list[str]:
    return [label["name"] if isinstance(label, dict) else label for label in issue["labels"]]


async def test_github_issue_triage_labels_an_opened_issue_from_a_signed_github_webhook(
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
    fake_anthropic: FakeAnthropic,
    fake_github: FakeGitHub,
) -> None:
    async with httpx.AsyncClient(base_url=fake_github.base_url) as github:
        opened = await github.post(
            "/repos/octocat/hello-world/issues",
            json={"title": "Crash when saving", "body": "Saving a file crashes the app."},
            headers={"Authorization": f"Bearer {fake_github.token}", "User-Agent": "test"},
        )
        assert opened.status_code == 201, opened.text
    number = opened.json()["number"]
    fake_anthropic.reply(" Bug\n")
    await _claude(api, owner, fake_anthropic)
    await _github(api, owner, fake_github)
    template = await _create(api, owner, "github-issue-triage")
    trigger_id, secret = await _webhook(api, owner, template.key, template)
    start_worker()

    body = json.dumps(
        {
            "action": "opened",
            "issue": {
                "number": number,
                "title": "Crash when saving",
                "body": "Saving a file crashes the app.",
            },
        }
    ).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    hook = await api.post(
        f"/hooks/{trigger_id}",
        content=body,
        headers={
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/1",
            "X-Hub-Signature-256": f"sha256={signature}",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-GitHub-Event": "issues",
        },
    )
    assert hook.status_code == 202, hook.text
    done = await wait_for_status(api, owner, hook.json()["execution_id"])
    assert done["status"] == "succeeded", done

    (prompt,) = [r.json["messages"][0]["content"] for r in fake_anthropic.requests]
    assert "Title: Crash when saving" in prompt
    assert "Saving a file crashes the app." in prompt
    (issue,) = _issues(fake_github)
    assert _label_names(issue) == ["bug"]
    assert done["output"] == {"issue": number, "action": "opened"}


async def test_linear_to_github_opens_each_waiting_issue_once_and_moves_it_on(
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
    fake_linear: FakeLinear,
    fake_github: FakeGitHub,
) -> None:
    from taskloom.tools.providers.linear import CREATE_ISSUE

    engineering = next(team for team in fake_linear.teams if team["key"] == "ENG")
    async with httpx.AsyncClient(base_url=fake_linear.base_url) as linear:
        for title in ("Flaky login test", "Dark mode"):
            made = await linear.post(
                "/graphql",
                json={
                    "query": CREATE_ISSUE,
                    "variables": {"input": {"teamId": engineering["id"], "title": title}},
                },
                headers={"Authorization": fake_linear.token},
            )
            assert made.json()["data"]["issueCreate"]["success"], made.text
    await _connect(
        api,
        owner,
        {
            "provider": "linear",
            "name": "linear",
            "base_url": fake_linear.base_url,
            "credentials": {"api_key": fake_linear.token},
        },
    )
    await _github(api, owner, fake_github)
    template = await _create(api, owner, "linear-to-github")
    start_worker()
    schedule_input = {
        "team_id": engineering["id"],
        "state": "Todo",
        "synced_state_id": fake_linear.state_id("ENG", "In Progress"),
    }

    first = await wait_for_status(
        api, owner, await execute(api, owner, template.key, schedule_input)
    )
    assert first["status"] == "succeeded", first
    assert sorted(i["title"] for i in _issues(fake_github)) == [
        "[ENG-1] Flaky login test",
        "[ENG-2] Dark mode",
    ]
    assert all("Synced from Linear: https://linear.app/" in i["body"] for i in _issues(fake_github))
    assert {i["state"]["name"] for i in fake_linear.issues} == {"In Progress"}

    again = await wait_for_status(
        api, owner, await execute(api, owner, template.key, schedule_input)
    )
    assert again["status"] == "succeeded", again
    assert len(_issues(fake_github)) == 2  # synced once


async def test_notion_daily_digest_sums_up_the_tasks_and_files_a_digest_page(
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
    fake_anthropic: FakeAnthropic,
    fake_notion: FakeNotion,
) -> None:
    notion_headers = {
        "Authorization": f"Bearer {fake_notion.token}",
        "Notion-Version": "2022-06-28",
    }
    async with httpx.AsyncClient(base_url=fake_notion.base_url) as notion:
        for title, status in (("Write the release notes", "In progress"), ("Fix CI", "Done")):
            made = await notion.post(
                "/v1/pages",
                json={
                    "parent": {"database_id": fake_notion.database_id},
                    "properties": {
                        "Name": {"title": [{"text": {"content": title}}]},
                        "Status": {"status": {"name": status}},
                    },
                },
                headers=notion_headers,
            )
            assert made.status_code == 200, made.text
    fake_anthropic.reply("Release notes are in progress; CI is fixed.")
    await _claude(api, owner, fake_anthropic)
    await _connect(
        api,
        owner,
        {
            "provider": "notion",
            "name": "notion",
            "base_url": fake_notion.base_url,
            "credentials": {"token": fake_notion.token},
            "config": {"database_id": fake_notion.database_id},
        },
    )
    template = await _create(api, owner, "notion-daily-digest")
    (schedule,) = template.triggers
    assert schedule.kind == "schedule"
    start_worker()

    done = await wait_for_status(
        api, owner, await execute(api, owner, template.key, {"day": "2026-12-07T08:00:00Z"})
    )
    assert done["status"] == "succeeded", done
    (prompt,) = [r.json["messages"][0]["content"] for r in fake_anthropic.requests]
    assert "- Write the release notes (In progress)" in prompt
    assert "- Fix CI (Done)" in prompt
    created = [r for r in fake_notion.requests if r.method == "POST" and r.path == "/v1/pages"]
    digest = created[-1].json
    assert digest["properties"]["Name"]["title"][0]["text"]["content"] == "Digest 2026-12-07"
    assert "Release notes are in progress; CI is fixed." in json.dumps(digest["children"])
    assert len(fake_notion.pages) == 3
    assert done["output"]["page"]


async def test_webhook_ai_router_classifies_a_standard_webhook_and_forwards_it_with_a_secret(
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
    fake_anthropic: FakeAnthropic,
    receiver: Receiver,
) -> None:
    for name, value in (("FORWARD_URL", receiver.url), ("FORWARD_TOKEN", "fwd-token-1234")):
        made = await api.post(
            "/api/secrets",
            json={"name": name, "value": value, "allowed_hosts": ["127.0.0.1"]},
            headers=owner.headers,
        )
        assert made.status_code == 201, made.text
    fake_anthropic.reply(lambda request: "spam" if "WIN" in str(request.json) else "Urgent")
    await _claude(api, owner, fake_anthropic)
    template = await _create(api, owner, "webhook-ai-router")
    trigger_id, secret = await _webhook(api, owner, template.key, template)
    start_worker()

    async def deliver(text: str) -> dict[str, Any]:
        body = json.dumps({"text": text}).encode()
        message_id = f"msg_{uuid.uuid4().hex}"
        now = datetime.now(UTC)
        hook = await api.post(
            f"/hooks/{trigger_id}",
            content=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "Sender/1.0",
                "webhook-id": message_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": standardwebhooks.Webhook(secret).sign(message_id, now, body),
            },
        )
        assert hook.status_code == 202, hook.text
        return await wait_for_status(api, owner, hook.json()["execution_id"])

    urgent = await deliver("The database is down")
    assert urgent["status"] == "succeeded", urgent
    assert urgent["output"] == {"class": "urgent"}
    (forwarded,) = receiver.wait_for(1)
    assert forwarded.headers["authorization"] == "Bearer fwd-token-1234"
    sent = json.loads(forwarded.body)
    assert sent["class"] == "urgent"
    assert "The database is down" in json.dumps(sent["message"])

    spam = await deliver("WIN a prize")
    assert spam["status"] == "succeeded", spam
    steps = {s["step_id"]: s["status"] for s in spam["steps"]}
    assert steps == {"classify": "succeeded", "forward": "skipped"}
    assert len(receiver.received) == 1  # spam is not forwarded


async def test_two_step_approval_needs_an_admin_then_an_owner(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker
) -> None:
    template = await _create(api, owner, "two-step-approval")
    start_worker()
    execution_id = await execute(
        api, owner, template.key, {"request": "New laptop", "amount": 1200}
    )
    for step, question in (
        ("manager", "Approve New laptop (1200)?"),
        ("finance", "The manager approved New laptop (1200). Release it?"),
    ):
        waiting = await wait_for_status(api, owner, execution_id, {"waiting"}, within=20)
        pending = [a for a in waiting["approvals"] if a["status"] == "pending"]
        assert [(a["step_id"], a["message"]) for a in pending] == [(step, question)]
        decided = await api.post(
            f"/api/executions/{execution_id}/steps/{step}/approve",
            json={"comment": "ok"},
            headers=owner.headers,
        )
        assert decided.status_code == 200, decided.text
    done = await wait_for_status(api, owner, execution_id)
    assert done["status"] == "succeeded", done
    assert done["output"] == {"request": "New laptop", "approved": True}

    # A rejection by the first approver ends it there: nobody else is asked.
    refused_id = await execute(api, owner, template.key, {"request": "Yacht", "amount": 9e6})
    await wait_for_status(api, owner, refused_id, {"waiting"}, within=20)
    rejected = await api.post(
        f"/api/executions/{refused_id}/steps/manager/reject",
        json={"comment": "no"},
        headers=owner.headers,
    )
    assert rejected.status_code == 200, rejected.text
    refused = await wait_for_status(api, owner, refused_id)
    assert refused["status"] == "succeeded", refused
    assert {s["step_id"]: s["status"] for s in refused["steps"]}["finance"] == "skipped"
    assert [a["step_id"] for a in refused["approvals"]] == ["manager"]
    assert refused["output"] == {"request": "Yacht", "approved": False}


# --- init and the UI --------------------------------------------------------------------------


async def test_init_copies_a_template_never_over_a_file_and_lists_them_for_an_unknown_name(
    tmp_path: Path,
) -> None:
    env = clean_env(TASKLOOM_URL="https://tl.example.com")
    made = await run_taskloom(
        "workflows", "init", "--template", "two-step-approval", "flows", env=env, cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    written = (tmp_path / "flows" / "two-step-approval.yaml").read_text()
    assert written.startswith(
        "# yaml-language-server: $schema=https://tl.example.com/api/schema/workflow.json\n"
    )
    checked = await run_taskloom("workflows", "validate", "flows", env=clean_env(), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr

    again = await run_taskloom(
        "workflows", "init", "--template", "two-step-approval", "flows", env=env, cwd=tmp_path
    )
    assert again.returncode == 1
    assert "exists; not overwritten" in again.stderr
    assert (tmp_path / "flows" / "two-step-approval.yaml").read_text() == written

    unknown = await run_taskloom(
        "workflows", "init", "--template", "nope", "flows", env=env, cwd=tmp_path
    )
    assert unknown.returncode == 2
    for name in NAMES:
        assert f"  {name}: " in unknown.stderr
