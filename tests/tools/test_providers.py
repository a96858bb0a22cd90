"""The Notion, Linear and GitHub providers, driven directly against fakes that speak the real
APIs' shapes: the exact request every tool sends, the trimmed answer it returns, and how each
kind of failure becomes a ToolError."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from taskloom.tools.base import Connection, ToolError, ToolProvider
from taskloom.tools.providers import github, linear, notion
from taskloom.tools.providers.github import GitHubProvider
from taskloom.tools.providers.linear import LinearProvider
from taskloom.tools.providers.notion import NotionProvider
from tests.fakes.tool_apis import FakeApi, FakeGitHub, FakeLinear, FakeNotion

PROVIDERS: dict[str, ToolProvider] = {
    "notion": NotionProvider(),
    "linear": LinearProvider(),
    "github": GitHubProvider(),
}
FAKES: dict[str, type[FakeApi]] = {"notion": FakeNotion, "linear": FakeLinear, "github": FakeGitHub}
TOOL_NAMES = {
    "notion": {"getTasks": True, "createTask": False, "updateTask": False, "deleteTask": False},
    "linear": {"getIssues": True, "createIssue": False, "updateIssue": False, "getTeams": True},
    "github": {
        "getIssues": True,
        "createIssue": False,
        "updateIssue": False,
        "getPullRequests": True,
        "createPullRequest": False,
        "getRepositories": True,
    },
}
MISSING_PAGE = "0f3c2a4e-1b2d-4c5e-8f90-a1b2c3d4e5f6"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def connect(
    provider: str,
    fake: FakeApi,
    *,
    base_url: str | None = None,
    credentials: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Connection:
    key = "api_key" if provider == "linear" else "token"
    return Connection(
        id=uuid.uuid4(),
        org_id=uuid.uuid4(),
        provider=provider,
        base_url=base_url or fake.base_url,
        credentials=credentials if credentials is not None else {key: fake.token},
        config=config or {},
    )


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# --- what every provider does alike -------------------------------------------------------


@pytest.mark.parametrize("name", PROVIDERS)
async def test_tools_are_listed_with_read_only_flags_and_schemas_of_their_args_models(
    name: str, http: httpx.AsyncClient
) -> None:
    fake = FAKES[name]()  # never started: listing tools sends nothing
    tools = await PROVIDERS[name].tools(connect(name, fake), http)
    assert {tool.name: tool.read_only for tool in tools} == TOOL_NAMES[name]
    for tool in tools:
        assert tool.Args is not None
        assert tool.input_schema == tool.Args.model_json_schema()
        assert tool.description


@pytest.mark.parametrize("name", PROVIDERS)
def test_provider_names_and_default_base_urls_are_the_real_apis(name: str) -> None:
    defaults = {
        "notion": "https://api.notion.com",
        "linear": "https://api.linear.app",
        "github": "https://api.github.com",
    }
    assert PROVIDERS[name].name == name
    assert PROVIDERS[name].default_base_url == defaults[name]


@pytest.mark.parametrize("name", PROVIDERS)
async def test_an_unknown_tool_is_a_non_retryable_unknown_tool_error(
    name: str, request: pytest.FixtureRequest, http: httpx.AsyncClient
) -> None:
    fake: FakeApi = request.getfixturevalue(f"fake_{name}")
    with pytest.raises(ToolError) as caught:
        await PROVIDERS[name].call(connect(name, fake), http, "dropDatabase", {})
    assert (caught.value.code, caught.value.retryable) == ("unknown_tool", False)
    assert fake.requests == []


@pytest.mark.parametrize(
    ("name", "model", "args"),
    [
        ("notion", notion.GetTasksArgs, {"page_size": 10, "sql": "DROP"}),
        ("linear", linear.CreateIssueArgs, {"team_id": "t", "title": "x", "labels": ["a"]}),
        ("github", github.CreateIssueArgs, {"title": "x", "milestone": 3}),
    ],
)
async def test_an_extra_argument_is_rejected_by_the_args_model_and_nothing_is_sent(
    name: str,
    model: type[Any],
    args: dict[str, Any],
    request: pytest.FixtureRequest,
    http: httpx.AsyncClient,
) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        model.model_validate(args)
    fake: FakeApi = request.getfixturevalue(f"fake_{name}")
    tool = {"notion": "getTasks", "linear": "createIssue", "github": "createIssue"}[name]
    with pytest.raises(ToolError) as caught:
        await PROVIDERS[name].call(connect(name, fake), http, tool, args)
    assert (caught.value.code, caught.value.retryable) == ("invalid_args", False)
    assert fake.requests == []


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("notion", "API token is invalid."),
        ("linear", "Authentication required, not authenticated"),
        ("github", "Bad credentials"),
    ],
)
async def test_a_wrong_token_is_a_non_retryable_401_quoting_the_api_but_never_the_token(
    name: str, quoted: str, request: pytest.FixtureRequest, http: httpx.AsyncClient
) -> None:
    fake: FakeApi = request.getfixturevalue(f"fake_{name}")
    key = "api_key" if name == "linear" else "token"
    wrong = "wrong-secret-7f3a9c"
    with pytest.raises(ToolError) as caught:
        await PROVIDERS[name].check(connect(name, fake, credentials={key: wrong}), http)
    error = caught.value
    assert (error.code, error.status, error.retryable) == (f"{name}_http_401", 401, False)
    assert error.message == f"{name} answered HTTP 401: {quoted}"
    assert wrong not in error.message
    assert fake.token not in error.message


@pytest.mark.parametrize("name", PROVIDERS)
@pytest.mark.parametrize("status", [500, 503, 429])
async def test_server_errors_and_429_are_retryable(
    name: str, status: int, request: pytest.FixtureRequest, http: httpx.AsyncClient
) -> None:
    fake: FakeApi = request.getfixturevalue(f"fake_{name}")
    fake.fail_next(1, status=status)
    with pytest.raises(ToolError) as caught:
        await PROVIDERS[name].check(connect(name, fake), http)
    assert (caught.value.code, caught.value.status) == (f"{name}_http_{status}", status)
    assert caught.value.retryable is True
    assert await PROVIDERS[name].check(connect(name, fake), http)  # the next call succeeds


@pytest.mark.parametrize("name", PROVIDERS)
async def test_an_api_failing_always_keeps_failing_until_it_recovers(
    name: str, request: pytest.FixtureRequest, http: httpx.AsyncClient
) -> None:
    fake: FakeApi = request.getfixturevalue(f"fake_{name}")
    fake.fail_always(502)
    for _ in range(2):
        with pytest.raises(ToolError, match="HTTP 502"):
            await PROVIDERS[name].check(connect(name, fake), http)
    fake.recover()
    assert await PROVIDERS[name].check(connect(name, fake), http)


@pytest.mark.parametrize("name", PROVIDERS)
async def test_a_slow_api_is_a_retryable_unreachable_error_naming_only_the_host(
    name: str, request: pytest.FixtureRequest
) -> None:
    fake: FakeApi = request.getfixturevalue(f"fake_{name}")
    fake.delay_seconds = 2
    async with httpx.AsyncClient(timeout=0.2) as http:
        with pytest.raises(ToolError) as caught:
            await PROVIDERS[name].check(connect(name, fake), http)
    error = caught.value
    assert (error.code, error.retryable) == (f"{name}_unreachable", True)
    assert error.message == "127.0.0.1 did not answer in time"


@pytest.mark.parametrize("name", PROVIDERS)
async def test_a_refused_connection_is_a_retryable_unreachable_error(
    name: str, http: httpx.AsyncClient
) -> None:
    fake = FAKES[name]()
    with pytest.raises(ToolError) as caught:
        await PROVIDERS[name].check(connect(name, fake, base_url=closed_port_url()), http)
    assert (caught.value.code, caught.value.retryable) == (f"{name}_unreachable", True)
    assert caught.value.message == "could not talk to 127.0.0.1 (ConnectError)"


@pytest.mark.parametrize(
    ("name", "path"), [("notion", "/v1/users/me"), ("linear", "/graphql"), ("github", "/user")]
)
async def test_a_base_url_with_a_path_prefix_and_trailing_slash_is_honoured(
    name: str, path: str, http: httpx.AsyncClient
) -> None:
    with FAKES[name](path_prefix="/api/v3") as fake:
        connection = connect(name, fake, base_url=fake.base_url + "/")
        assert await PROVIDERS[name].check(connection, http)
    assert fake.requests[-1].path == "/api/v3" + path


@pytest.mark.parametrize("name", PROVIDERS)
async def test_bad_credentials_are_refused_before_any_request_without_quoting_them(
    name: str, request: pytest.FixtureRequest, http: httpx.AsyncClient
) -> None:
    fake: FakeApi = request.getfixturevalue(f"fake_{name}")
    for credentials in ({}, {"token": "hunter2-secret", "api_key": "hunter2-secret", "x": 1}):
        with pytest.raises(ToolError) as caught:
            await PROVIDERS[name].check(connect(name, fake, credentials=credentials), http)
        assert (caught.value.code, caught.value.retryable) == ("invalid_credentials", False)
        assert "hunter2" not in caught.value.message
    assert fake.requests == []


# --- Notion ----------------------------------------------------------------------------------


def notion_connection(fake: FakeNotion, **config: Any) -> Connection:
    return connect("notion", fake, config={"database_id": fake.database_id, **config})


def assert_notion_headers(fake: FakeNotion, request_index: int = -1) -> None:
    headers = fake.requests[request_index].headers
    assert headers["authorization"] == f"Bearer {fake.token}"
    assert headers["notion-version"] == "2022-06-28"


async def test_notion_check_names_the_bot_reached(
    fake_notion: FakeNotion, http: httpx.AsyncClient
) -> None:
    assert await NotionProvider().check(connect("notion", fake_notion), http) == {
        "account": "Taskloom Bot"
    }
    sent = fake_notion.requests[-1]
    assert (sent.method, sent.path) == ("GET", "/v1/users/me")
    assert_notion_headers(fake_notion)


async def test_notion_create_task_sends_title_status_and_content_split_into_2000_char_texts(
    fake_notion: FakeNotion, http: httpx.AsyncClient
) -> None:
    content = "a" * 2000 + "b" * 2000 + "c" * 5
    task = await NotionProvider().call(
        notion_connection(fake_notion),
        http,
        "createTask",
        {"title": "Write the report", "status": "In progress", "content": content},
    )
    sent = fake_notion.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/pages")
    assert_notion_headers(fake_notion)
    assert sent.json == {
        "parent": {"database_id": fake_notion.database_id},
        "properties": {
            "Name": {"title": [{"type": "text", "text": {"content": "Write the report"}}]},
            "Status": {"status": {"name": "In progress"}},
        },
        "children": [
            {
                "object": "block",
                "type": "paragraph",
                "paragraph": {
                    "rich_text": [
                        {"type": "text", "text": {"content": "a" * 2000}},
                        {"type": "text", "text": {"content": "b" * 2000}},
                        {"type": "text", "text": {"content": "c" * 5}},
                    ]
                },
            }
        ],
    }
    assert set(task) == {"id", "title", "status", "url", "last_edited_time"}
    assert (task["title"], task["status"]) == ("Write the report", "In progress")
    assert task["url"].startswith("https://www.notion.so/write-the-report-")
    stored = fake_notion.blocks[task["id"].replace("-", "")]
    assert "".join(t["plain_text"] for t in stored[0]["paragraph"]["rich_text"]) == content


async def test_notion_created_tasks_are_listed_by_get_tasks_trimmed(
    fake_notion: FakeNotion, http: httpx.AsyncClient
) -> None:
    provider, connection = NotionProvider(), notion_connection(fake_notion)
    created = await provider.call(connection, http, "createTask", {"title": "First"})
    listed = await provider.call(connection, http, "getTasks", {})
    sent = fake_notion.requests[-1]
    assert (sent.method, sent.path) == ("POST", f"/v1/databases/{fake_notion.database_id}/query")
    assert sent.json == {"page_size": 100}
    assert_notion_headers(fake_notion)
    assert listed == {"tasks": [created], "next_cursor": None}
    assert created["status"] == "Not started"  # the database's default option


async def test_notion_get_tasks_filters_by_status_and_passes_cursors_through(
    fake_notion: FakeNotion, http: httpx.AsyncClient
) -> None:
    provider, connection = NotionProvider(), notion_connection(fake_notion)
    for title, status in [("a", "Done"), ("b", "In progress"), ("c", "Done"), ("d", "Done")]:
        await provider.call(connection, http, "createTask", {"title": title, "status": status})
    first = await provider.call(connection, http, "getTasks", {"status": "Done", "page_size": 2})
    assert fake_notion.requests[-1].json == {
        "page_size": 2,
        "filter": {"property": "Status", "status": {"equals": "Done"}},
    }
    assert [task["title"] for task in first["tasks"]] == ["a", "c"]
    assert first["next_cursor"] is not None
    second = await provider.call(
        connection,
        http,
        "getTasks",
        {"status": "Done", "page_size": 2, "start_cursor": first["next_cursor"]},
    )
    assert fake_notion.requests[-1].json["start_cursor"] == first["next_cursor"]
    assert [task["title"] for task in second["tasks"]] == ["d"]
    assert second["next_cursor"] is None


async def test_notion_custom_property_names_and_a_database_id_in_the_arguments_win(
    fake_notion: FakeNotion, http: httpx.AsyncClient
) -> None:
    other = fake_notion.add_database(title_property="Task", status_property="Stage")
    provider, connection = NotionProvider(), notion_connection(fake_notion)
    args = {"database_id": other, "title_property": "Task", "status_property": "Stage"}
    task = await provider.call(
        connection, http, "createTask", {**args, "title": "Elsewhere", "status": "Done"}
    )
    assert fake_notion.requests[-1].json["properties"] == {
        "Task": {"title": [{"type": "text", "text": {"content": "Elsewhere"}}]},
        "Stage": {"status": {"name": "Done"}},
    }
    listed = await provider.call(
        connection, http, "getTasks", {"database_id": other, "status_property": "Stage"}
    )
    assert fake_notion.requests[-1].path == f"/v1/databases/{other}/query"
    assert listed["tasks"] == [task]
    assert task["status"] == "Done"
    default = await provider.call(connection, http, "getTasks", {})
    assert default["tasks"] == []  # the connection's own database is untouched


async def test_notion_without_a_database_id_anywhere_is_an_error_before_any_request(
    fake_notion: FakeNotion, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ToolError) as caught:
        await NotionProvider().call(connect("notion", fake_notion), http, "getTasks", {})
    assert (caught.value.code, caught.value.retryable) == ("missing_database_id", False)
    assert fake_notion.requests == []


async def test_notion_update_task_patches_title_and_status(
    fake_notion: FakeNotion, http: httpx.AsyncClient
) -> None:
    provider, connection = NotionProvider(), notion_connection(fake_notion)
    task = await provider.call(connection, http, "createTask", {"title": "Draft"})
    updated = await provider.call(
        connection, http, "updateTask", {"page_id": task["id"], "title": "Final", "status": "Done"}
    )
    sent = fake_notion.requests[-1]
    assert (sent.method, sent.path) == ("PATCH", f"/v1/pages/{task['id']}")
    assert_notion_headers(fake_notion)
    assert sent.json == {
        "properties": {
            "Name": {"title": [{"type": "text", "text": {"content": "Final"}}]},
            "Status": {"status": {"name": "Done"}},
        }
    }
    assert (updated["id"], updated["title"], updated["status"]) == (task["id"], "Final", "Done")
    assert updated["last_edited_time"] > task["last_edited_time"]
    listed = await provider.call(connection, http, "getTasks", {"status": "Done"})
    assert listed["tasks"] == [updated]


async def test_notion_update_task_needs_something_to_change(
    fake_notion: FakeNotion, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ToolError, match="give a title, a status or both") as caught:
        await NotionProvider().call(
            notion_connection(fake_notion), http, "updateTask", {"page_id": MISSING_PAGE}
        )
    assert caught.value.code == "invalid_args"


async def test_notion_delete_task_archives_the_page_which_then_leaves_the_list(
    fake_notion: FakeNotion, http: httpx.AsyncClient
) -> None:
    provider, connection = NotionProvider(), notion_connection(fake_notion)
    task = await provider.call(connection, http, "createTask", {"title": "Obsolete"})
    result = await provider.call(connection, http, "deleteTask", {"page_id": task["id"]})
    sent = fake_notion.requests[-1]
    assert (sent.method, sent.path, sent.json) == (
        "PATCH",
        f"/v1/pages/{task['id']}",
        {"archived": True},
    )
    assert result == {"id": task["id"], "archived": True}
    assert (await provider.call(connection, http, "getTasks", {}))["tasks"] == []


async def test_notion_unknown_page_is_a_non_retryable_404_quoting_notion(
    fake_notion: FakeNotion, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ToolError) as caught:
        await NotionProvider().call(
            notion_connection(fake_notion), http, "deleteTask", {"page_id": MISSING_PAGE}
        )
    error = caught.value
    assert (error.code, error.status, error.retryable) == ("notion_http_404", 404, False)
    assert (
        error.message == f"notion answered HTTP 404: Could not find page with ID: {MISSING_PAGE}."
    )


@pytest.mark.parametrize("page_id", ["../users/me", "not-a-uuid", MISSING_PAGE + "/x"])
def test_notion_page_ids_must_be_uuids_so_they_cannot_change_the_url_path(page_id: str) -> None:
    with pytest.raises(ValidationError):
        notion.DeleteTaskArgs.model_validate({"page_id": page_id})


def test_notion_page_size_is_at_most_100() -> None:
    with pytest.raises(ValidationError):
        notion.GetTasksArgs.model_validate({"page_size": 101})


async def test_fake_notion_refuses_requests_without_notion_version_as_notion_does(
    fake_notion: FakeNotion, http: httpx.AsyncClient
) -> None:
    response = await http.get(
        f"{fake_notion.base_url}/v1/users/me",
        headers={"Authorization": f"Bearer {fake_notion.token}"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "missing_version"


# --- Linear ----------------------------------------------------------------------------------


def graphql_sent(fake: FakeLinear) -> dict[str, Any]:
    """The last GraphQL request, after checking how it was sent."""
    sent = fake.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/graphql")
    assert sent.headers["authorization"] == fake.token  # a personal key: no "Bearer"
    assert sent.headers["content-type"] == "application/json"
    body: dict[str, Any] = sent.json
    assert set(body) == {"query", "variables"}
    return body


async def test_linear_check_asks_for_the_viewer_with_the_raw_api_key(
    fake_linear: FakeLinear, http: httpx.AsyncClient
) -> None:
    assert await LinearProvider().check(connect("linear", fake_linear), http) == {
        "account": "Ada Lovelace"
    }
    assert graphql_sent(fake_linear) == {
        "query": "query { viewer { id name } }",
        "variables": {},
    }


async def test_linear_get_teams_lists_id_key_and_name(
    fake_linear: FakeLinear, http: httpx.AsyncClient
) -> None:
    teams = await LinearProvider().call(connect("linear", fake_linear), http, "getTeams", {})
    assert teams == {
        "teams": [{k: team[k] for k in ("id", "key", "name")} for team in fake_linear.teams]
    }
    body = graphql_sent(fake_linear)
    assert body["variables"] == {"first": 100}
    assert "teams(first: $first)" in body["query"]


async def test_linear_create_issue_sends_its_input_as_variables_and_the_issue_is_listed(
    fake_linear: FakeLinear, http: httpx.AsyncClient
) -> None:
    provider, connection = LinearProvider(), connect("linear", fake_linear)
    team = fake_linear.teams[0]
    args = {"team_id": team["id"], "title": 'Fix "login"', "description": "Steps", "priority": 2}
    issue = await provider.call(connection, http, "createIssue", args)
    body = graphql_sent(fake_linear)
    assert body["query"] == linear.CREATE_ISSUE
    assert body["variables"] == {
        "input": {
            "teamId": team["id"],
            "title": 'Fix "login"',
            "description": "Steps",
            "priority": 2,
        }
    }
    assert issue == {
        "id": issue["id"],
        "identifier": "ENG-1",
        "title": 'Fix "login"',
        "state": "Todo",
        "url": "https://linear.app/fake/issue/eng-1/fix-login",
        "assignee": None,
    }
    listed = await provider.call(connection, http, "getIssues", {})
    assert graphql_sent(fake_linear)["variables"] == {"first": 50}
    assert listed == {"issues": [issue], "next_cursor": None}


async def test_linear_update_issue_sends_only_the_changes(
    fake_linear: FakeLinear, http: httpx.AsyncClient
) -> None:
    provider, connection = LinearProvider(), connect("linear", fake_linear)
    created = await provider.call(
        connection, http, "createIssue", {"team_id": fake_linear.teams[0]["id"], "title": "Old"}
    )
    done = fake_linear.state_id("ENG", "Done")
    updated = await provider.call(
        connection,
        http,
        "updateIssue",
        {"issue_id": "ENG-1", "title": "New", "state_id": done, "priority": 1},
    )
    body = graphql_sent(fake_linear)
    assert body["query"] == linear.UPDATE_ISSUE
    assert body["variables"] == {
        "id": "ENG-1",
        "input": {"title": "New", "stateId": done, "priority": 1},
    }
    assert updated == {**created, "title": "New", "state": "Done"}


async def test_linear_get_issues_filters_by_team_and_state_and_passes_cursors_through(
    fake_linear: FakeLinear, http: httpx.AsyncClient
) -> None:
    provider, connection = LinearProvider(), connect("linear", fake_linear)
    eng, ops = fake_linear.teams[0]["id"], fake_linear.teams[1]["id"]
    for team, title in [(eng, "e1"), (ops, "o1"), (eng, "e2"), (eng, "e3")]:
        await provider.call(connection, http, "createIssue", {"team_id": team, "title": title})
    args: dict[str, Any] = {"team_id": eng, "state": "Todo", "first": 2}
    first = await provider.call(connection, http, "getIssues", args)
    assert graphql_sent(fake_linear)["variables"] == {
        "first": 2,
        "filter": {"team": {"id": {"eq": eng}}, "state": {"name": {"eq": "Todo"}}},
    }
    assert [issue["title"] for issue in first["issues"]] == ["e1", "e2"]
    assert first["next_cursor"] == first["issues"][-1]["id"]
    second = await provider.call(
        connection, http, "getIssues", {**args, "after": first["next_cursor"]}
    )
    assert graphql_sent(fake_linear)["variables"]["after"] == first["next_cursor"]
    assert [issue["title"] for issue in second["issues"]] == ["e3"]
    assert second["next_cursor"] is None


async def test_linear_graphql_errors_in_a_200_answer_are_non_retryable_errors(
    fake_linear: FakeLinear, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ToolError) as caught:
        await LinearProvider().call(
            connect("linear", fake_linear), http, "createIssue", {"team_id": "nope", "title": "x"}
        )
    error = caught.value
    assert (error.code, error.retryable) == ("linear_graphql_error", False)
    assert error.message == "linear answered with an error: Entity not found: Team"


async def test_linear_ratelimited_is_retryable_although_linear_answers_http_400(
    fake_linear: FakeLinear, http: httpx.AsyncClient
) -> None:
    fake_linear.rate_limit_next()
    with pytest.raises(ToolError) as caught:
        await LinearProvider().call(connect("linear", fake_linear), http, "getTeams", {})
    error = caught.value
    assert (error.code, error.status, error.retryable) == ("linear_rate_limited", 400, True)
    assert "Rate limit exceeded" in error.message


async def test_linear_ratelimited_inside_a_200_answer_is_retryable_too(
    fake_linear: FakeLinear, http: httpx.AsyncClient
) -> None:
    fake_linear.fail_next_graphql(1, "Too many requests", "RATELIMITED", status=200)
    with pytest.raises(ToolError) as caught:
        await LinearProvider().check(connect("linear", fake_linear), http)
    assert (caught.value.code, caught.value.retryable) == ("linear_rate_limited", True)


async def test_linear_a_mutation_answering_success_false_is_an_error(
    fake_linear: FakeLinear, http: httpx.AsyncClient
) -> None:
    fake_linear.refuse_mutations = True
    with pytest.raises(ToolError) as caught:
        await LinearProvider().call(
            connect("linear", fake_linear),
            http,
            "createIssue",
            {"team_id": fake_linear.teams[0]["id"], "title": "x"},
        )
    assert (caught.value.code, caught.value.retryable) == ("linear_mutation_failed", False)
    assert fake_linear.issues == []


def test_linear_update_needs_something_to_change_and_priority_is_0_to_4() -> None:
    with pytest.raises(ValidationError, match="give at least one"):
        linear.UpdateIssueArgs.model_validate({"issue_id": "ENG-1"})
    with pytest.raises(ValidationError):
        linear.CreateIssueArgs.model_validate({"team_id": "t", "title": "x", "priority": 5})
    with pytest.raises(ValidationError):
        linear.GetIssuesArgs.model_validate({"first": 101})


# --- GitHub ----------------------------------------------------------------------------------


def github_connection(fake: FakeGitHub, **config: Any) -> Connection:
    return connect("github", fake, config={"owner": "octocat", "repo": "hello-world", **config})


def assert_github_headers(fake: FakeGitHub) -> None:
    headers = fake.requests[-1].headers
    assert headers["authorization"] == f"Bearer {fake.token}"
    assert headers["accept"] == "application/vnd.github+json"
    assert headers["x-github-api-version"] == "2022-11-28"
    assert headers["user-agent"].startswith("Taskloom/")


async def test_github_check_returns_the_token_users_login(
    fake_github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    assert await GitHubProvider().check(connect("github", fake_github), http) == {
        "account": "octocat"
    }
    assert (fake_github.requests[-1].method, fake_github.requests[-1].path) == ("GET", "/user")
    assert_github_headers(fake_github)


async def test_github_create_issue_posts_its_fields_and_the_issue_is_listed_trimmed(
    fake_github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    provider, connection = GitHubProvider(), github_connection(fake_github)
    args = {"title": "Crash", "body": "On start", "labels": ["bug"], "assignees": ["octocat"]}
    issue = await provider.call(connection, http, "createIssue", args)
    sent = fake_github.requests[-1]
    assert (sent.method, sent.path, sent.json) == (
        "POST",
        "/repos/octocat/hello-world/issues",
        args,
    )
    assert_github_headers(fake_github)
    assert issue == {
        "number": 1,
        "title": "Crash",
        "state": "open",
        "html_url": "https://github.com/octocat/hello-world/issues/1",
        "user": "octocat",
        "labels": ["bug"],
        "assignees": ["octocat"],
        "comments": 0,
        "body": "On start",
        "created_at": "2024-05-01T12:00:01Z",
        "updated_at": "2024-05-01T12:00:01Z",
    }
    listed = await provider.call(connection, http, "getIssues", {})
    assert fake_github.requests[-1].query == {"state": "open", "per_page": "30", "page": "1"}
    assert listed == {"issues": [issue], "next_page": None}


async def test_github_get_issues_leaves_out_pull_requests_and_reports_the_next_page(
    fake_github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    provider, connection = GitHubProvider(), github_connection(fake_github)
    await provider.call(connection, http, "createIssue", {"title": "one", "labels": ["bug"]})
    await provider.call(
        connection, http, "createPullRequest", {"title": "pr", "head": "feature", "base": "main"}
    )
    await provider.call(connection, http, "createIssue", {"title": "three", "labels": ["bug"]})
    await provider.call(connection, http, "createIssue", {"title": "four"})
    first = await provider.call(connection, http, "getIssues", {"per_page": 2})
    assert [issue["title"] for issue in first["issues"]] == ["one"]  # the PR was skipped
    assert first["next_page"] == 2
    second = await provider.call(connection, http, "getIssues", {"per_page": 2, "page": 2})
    assert fake_github.requests[-1].query["page"] == "2"
    assert [issue["title"] for issue in second["issues"]] == ["three", "four"]
    assert second["next_page"] is None
    labelled = await provider.call(
        connection, http, "getIssues", {"labels": ["bug"], "state": "all"}
    )
    assert fake_github.requests[-1].query == {
        "state": "all",
        "per_page": "30",
        "page": "1",
        "labels": "bug",
    }
    assert [issue["title"] for issue in labelled["issues"]] == ["one", "three"]


async def test_github_update_issue_patches_only_the_given_fields(
    fake_github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    provider, connection = GitHubProvider(), github_connection(fake_github)
    await provider.call(connection, http, "createIssue", {"title": "Crash", "labels": ["bug"]})
    args = {"number": 1, "state": "closed", "labels": ["wontfix"]}
    updated = await provider.call(connection, http, "updateIssue", args)
    sent = fake_github.requests[-1]
    assert (sent.method, sent.path, sent.json) == (
        "PATCH",
        "/repos/octocat/hello-world/issues/1",
        {"state": "closed", "labels": ["wontfix"]},
    )
    assert_github_headers(fake_github)
    assert (updated["state"], updated["labels"], updated["title"]) == (
        "closed",
        ["wontfix"],
        "Crash",
    )
    assert (await provider.call(connection, http, "getIssues", {}))["issues"] == []
    closed = await provider.call(connection, http, "getIssues", {"state": "closed"})
    assert closed["issues"] == [updated]


async def test_github_create_pull_request_and_list_pull_requests(
    fake_github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    provider, connection = GitHubProvider(), github_connection(fake_github)
    args = {"title": "Add x", "head": "feature", "base": "main", "body": "Adds x", "draft": True}
    pull = await provider.call(connection, http, "createPullRequest", args)
    sent = fake_github.requests[-1]
    assert (sent.method, sent.path, sent.json) == ("POST", "/repos/octocat/hello-world/pulls", args)
    assert_github_headers(fake_github)
    assert pull == {
        "number": 1,
        "title": "Add x",
        "state": "open",
        "html_url": "https://github.com/octocat/hello-world/pull/1",
        "user": "octocat",
        "head": "feature",
        "base": "main",
        "draft": True,
        "merged_at": None,
        "created_at": "2024-05-01T12:00:01Z",
    }
    listed = await provider.call(connection, http, "getPullRequests", {"state": "all"})
    sent = fake_github.requests[-1]
    assert (sent.method, sent.path) == ("GET", "/repos/octocat/hello-world/pulls")
    assert sent.query == {"state": "all", "per_page": "30", "page": "1"}
    assert listed == {"pull_requests": [pull], "next_page": None}


async def test_github_get_repositories_of_the_user_or_of_an_organization(
    fake_github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    provider, connection = GitHubProvider(), connect("github", fake_github)
    mine = await provider.call(connection, http, "getRepositories", {"per_page": 5})
    sent = fake_github.requests[-1]
    assert (sent.path, sent.query) == ("/user/repos", {"per_page": "5", "page": "1"})
    assert mine == {
        "repositories": [
            {
                "full_name": "octocat/hello-world",
                "name": "hello-world",
                "owner": "octocat",
                "private": False,
                "html_url": "https://github.com/octocat/hello-world",
                "description": "The hello-world repository",
                "default_branch": "main",
            }
        ],
        "next_page": None,
    }
    org = await provider.call(connection, http, "getRepositories", {"org": "octo-org"})
    assert fake_github.requests[-1].path == "/orgs/octo-org/repos"
    assert_github_headers(fake_github)
    assert [repo["full_name"] for repo in org["repositories"]] == ["octo-org/widgets"]


async def test_github_owner_and_repo_in_the_arguments_override_the_connection_settings(
    fake_github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    provider, connection = GitHubProvider(), github_connection(fake_github)
    args = {"owner": "octo-org", "repo": "widgets", "title": "Elsewhere"}
    await provider.call(connection, http, "createIssue", args)
    assert fake_github.requests[-1].path == "/repos/octo-org/widgets/issues"
    assert fake_github.requests[-1].json == {"title": "Elsewhere"}
    assert fake_github.repos[("octocat", "hello-world")]["items"] == []


async def test_github_without_a_repository_anywhere_is_an_error_before_any_request(
    fake_github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ToolError) as caught:
        await GitHubProvider().call(connect("github", fake_github), http, "getIssues", {})
    assert (caught.value.code, caught.value.retryable) == ("missing_repository", False)
    assert fake_github.requests == []


async def test_github_validation_failures_are_non_retryable_and_quote_the_first_error(
    fake_github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ToolError) as caught:
        await GitHubProvider().call(
            github_connection(fake_github),
            http,
            "createPullRequest",
            {"title": "x", "head": "no-such-branch", "base": "main"},
        )
    error = caught.value
    assert (error.code, error.status, error.retryable) == ("github_http_422", 422, False)
    assert error.message == "github answered HTTP 422: Validation Failed (head: invalid)"


async def test_github_unknown_repository_is_a_non_retryable_404(
    fake_github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ToolError) as caught:
        await GitHubProvider().call(
            github_connection(fake_github, repo="missing"), http, "getPullRequests", {}
        )
    assert (caught.value.message, caught.value.retryable) == (
        "github answered HTTP 404: Not Found",
        False,
    )


async def test_github_403_is_retryable_only_when_it_is_a_rate_limit(
    fake_github: FakeGitHub, http: httpx.AsyncClient
) -> None:
    provider, connection = GitHubProvider(), connect("github", fake_github)
    fake_github.fail_next(1, status=403, headers={"x-ratelimit-remaining": "0"})
    with pytest.raises(ToolError) as primary:
        await provider.check(connection, http)
    assert (primary.value.code, primary.value.status) == ("github_rate_limited", 403)
    assert primary.value.retryable is True
    fake_github.fail_next(1, status=403, headers={"retry-after": "60"})
    with pytest.raises(ToolError) as secondary:
        await provider.check(connection, http)
    assert secondary.value.retryable is True
    fake_github.fail_next(1, status=403)
    with pytest.raises(ToolError) as forbidden:
        await provider.check(connection, http)
    assert (forbidden.value.code, forbidden.value.retryable) == ("github_http_403", False)


@pytest.mark.parametrize("owner", ["..", ".", "a/b", "a b", "x" * 101])
def test_github_owner_repo_and_org_names_cannot_change_the_url_path(owner: str) -> None:
    with pytest.raises(ValidationError):
        github.GetIssuesArgs.model_validate({"owner": owner, "repo": "r"})
    with pytest.raises(ValidationError):
        github.GetRepositoriesArgs.model_validate({"org": owner})
    with pytest.raises(ValidationError):
        github.GitHubConfig.model_validate({"repo": owner})


async def test_fake_github_refuses_requests_without_a_user_agent_as_github_does(
    fake_github: FakeGitHub,
) -> None:
    async with httpx.AsyncClient() as client:
        del client.headers["user-agent"]
        response = await client.get(
            f"{fake_github.base_url}/user", headers={"Authorization": f"Bearer {fake_github.token}"}
        )
    assert response.status_code == 403
    assert "User-Agent" in response.json()["message"]
