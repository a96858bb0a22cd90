"""Linear: issues and teams through the GraphQL API, authenticated with a personal API key.
Every value travels as a GraphQL variable; queries are constants and never built from input."""

from __future__ import annotations

from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from taskloom.tools.base import Connection, Tool, ToolArgs, ToolError, status_error
from taskloom.tools.providers._rest import (
    builtin_tool,
    endpoint,
    json_body,
    json_or_none,
    send,
    tool_args,
    validated,
)

_ISSUE = "id identifier title url state { id name } assignee { id name }"

ISSUES_QUERY = f"""query Issues($first: Int!, $after: String, $filter: IssueFilter) {{
  issues(first: $first, after: $after, filter: $filter) {{
    nodes {{ {_ISSUE} }}
    pageInfo {{ hasNextPage endCursor }}
  }}
}}"""

CREATE_ISSUE = f"""mutation IssueCreate($input: IssueCreateInput!) {{
  issueCreate(input: $input) {{ success issue {{ {_ISSUE} }} }}
}}"""

UPDATE_ISSUE = f"""mutation IssueUpdate($id: String!, $input: IssueUpdateInput!) {{
  issueUpdate(id: $id, input: $input) {{ success issue {{ {_ISSUE} }} }}
}}"""

TEAMS_QUERY = """query Teams($first: Int!) {
  teams(first: $first) { nodes { id key name } }
}"""

VIEWER_QUERY = "query { viewer { id name } }"

_PRIORITY = "0 no priority, 1 urgent, 2 high, 3 medium, 4 low"


class LinearCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    api_key: SecretStr = Field(min_length=1, description="A personal API key (lin_api_...)")


class LinearConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GetIssuesArgs(ToolArgs):
    team_id: str | None = Field(default=None, max_length=100, description="Only this team's")
    state: str | None = Field(default=None, max_length=100, description="A workflow state name")
    first: int = Field(default=50, ge=1, le=100)
    after: str | None = Field(default=None, max_length=500, description="A next_cursor")


class CreateIssueArgs(ToolArgs):
    team_id: str = Field(min_length=1, max_length=100)
    title: str = Field(min_length=1, max_length=1000)
    description: str | None = Field(default=None, max_length=100_000, description="Markdown")
    priority: int | None = Field(default=None, ge=0, le=4, description=_PRIORITY)


class UpdateIssueArgs(ToolArgs):
    issue_id: str = Field(min_length=1, max_length=100, description="An id or e.g. ENG-123")
    title: str | None = Field(default=None, min_length=1, max_length=1000)
    description: str | None = Field(default=None, max_length=100_000, description="Markdown")
    state_id: str | None = Field(default=None, min_length=1, max_length=100)
    priority: int | None = Field(default=None, ge=0, le=4, description=_PRIORITY)

    @model_validator(mode="after")
    def _something_to_change(self) -> UpdateIssueArgs:
        if all(
            value is None for value in (self.title, self.description, self.state_id, self.priority)
        ):
            raise ValueError("give at least one of title, description, state_id, priority")
        return self


class GetTeamsArgs(ToolArgs):
    pass


TOOLS = [
    builtin_tool(
        "getIssues",
        GetIssuesArgs,
        "List Linear issues, optionally of one team and in one workflow state",
        read_only=True,
    ),
    builtin_tool(
        "createIssue", CreateIssueArgs, "Create a Linear issue in a team", read_only=False
    ),
    builtin_tool(
        "updateIssue",
        UpdateIssueArgs,
        "Change a Linear issue's title, description, state or priority",
        read_only=False,
    ),
    builtin_tool(
        "getTeams",
        GetTeamsArgs,
        "List the Linear teams the API key can see (their ids are used by issues)",
        read_only=True,
    ),
]


def _issue(node: dict[str, Any]) -> dict[str, Any]:
    state = node.get("state") or {}
    assignee = node.get("assignee") or {}
    return {
        "id": node.get("id"),
        "identifier": node.get("identifier"),
        "title": node.get("title"),
        "state": state.get("name"),
        "url": node.get("url"),
        "assignee": assignee.get("name"),
    }


class LinearProvider:
    """Issues and teams of a Linear workspace, through a personal API key."""

    name: ClassVar[str] = "linear"
    default_base_url: ClassVar[str] = "https://api.linear.app"
    Credentials: ClassVar[type[BaseModel]] = LinearCredentials
    Config: ClassVar[type[BaseModel]] = LinearConfig

    async def tools(self, connection: Connection, http: Any) -> list[Tool]:
        return list(TOOLS)

    async def call(self, connection: Connection, http: Any, tool: str, args: dict[str, Any]) -> Any:
        if tool == "getIssues":
            return await self._get_issues(connection, http, tool_args(GetIssuesArgs, tool, args))
        if tool == "createIssue":
            return await self._create_issue(
                connection, http, tool_args(CreateIssueArgs, tool, args)
            )
        if tool == "updateIssue":
            return await self._update_issue(
                connection, http, tool_args(UpdateIssueArgs, tool, args)
            )
        if tool == "getTeams":
            tool_args(GetTeamsArgs, tool, args)
            data = await _graphql(connection, http, TEAMS_QUERY, {"first": 100})
            nodes = (data.get("teams") or {}).get("nodes") or []
            return {
                "teams": [{key: team.get(key) for key in ("id", "key", "name")} for team in nodes]
            }
        raise ToolError(f"linear has no tool {tool[:100]!r}", code="unknown_tool")

    async def check(self, connection: Connection, http: Any) -> dict[str, Any]:
        viewer = (await _graphql(connection, http, VIEWER_QUERY, {})).get("viewer") or {}
        return {"account": viewer.get("name") or viewer.get("id")}

    async def _get_issues(
        self, connection: Connection, http: httpx.AsyncClient, args: GetIssuesArgs
    ) -> dict[str, Any]:
        variables: dict[str, Any] = {"first": args.first}
        if args.after is not None:
            variables["after"] = args.after
        issue_filter: dict[str, Any] = {}
        if args.team_id is not None:
            issue_filter["team"] = {"id": {"eq": args.team_id}}
        if args.state is not None:
            issue_filter["state"] = {"name": {"eq": args.state}}
        if issue_filter:
            variables["filter"] = issue_filter
        issues = (await _graphql(connection, http, ISSUES_QUERY, variables)).get("issues") or {}
        page = issues.get("pageInfo") or {}
        return {
            "issues": [_issue(node) for node in issues.get("nodes") or []],
            "next_cursor": page.get("endCursor") if page.get("hasNextPage") else None,
        }

    async def _create_issue(
        self, connection: Connection, http: httpx.AsyncClient, args: CreateIssueArgs
    ) -> dict[str, Any]:
        issue_input: dict[str, Any] = {"teamId": args.team_id, "title": args.title}
        if args.description is not None:
            issue_input["description"] = args.description
        if args.priority is not None:
            issue_input["priority"] = args.priority
        data = await _graphql(connection, http, CREATE_ISSUE, {"input": issue_input})
        return _mutated(data, "issueCreate")

    async def _update_issue(
        self, connection: Connection, http: httpx.AsyncClient, args: UpdateIssueArgs
    ) -> dict[str, Any]:
        changes = {
            "title": args.title,
            "description": args.description,
            "stateId": args.state_id,
            "priority": args.priority,
        }
        issue_input = {key: value for key, value in changes.items() if value is not None}
        variables = {"id": args.issue_id, "input": issue_input}
        return _mutated(await _graphql(connection, http, UPDATE_ISSUE, variables), "issueUpdate")


def _mutated(data: dict[str, Any], mutation: str) -> dict[str, Any]:
    """The issue a mutation returned; `success: false` is an error."""
    payload = data.get(mutation) or {}
    if payload.get("success") is not True or not isinstance(payload.get("issue"), dict):
        raise ToolError(
            f"linear refused the change ({mutation} success: false)", code="linear_mutation_failed"
        )
    return _issue(payload["issue"])


def _first_error(body: Any) -> tuple[str | None, str | None]:
    """(message, extensions.code) of the first GraphQL error in `body`, if any."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None, None
    message = errors[0].get("message")
    extensions = errors[0].get("extensions")
    code = extensions.get("code") if isinstance(extensions, dict) else None
    return (
        message if isinstance(message, str) else "unknown error",
        code if isinstance(code, str) else None,
    )


async def _graphql(
    connection: Connection, http: httpx.AsyncClient, query: str, variables: dict[str, Any]
) -> dict[str, Any]:
    """The `data` of one GraphQL request. Errors in the answer, whatever its status, are
    ToolErrors; RATELIMITED ones are retryable."""
    credentials = validated(
        LinearCredentials,
        connection.credentials,
        what="the linear credentials",
        code="invalid_credentials",
    )
    # Personal API keys go without the "Bearer " that OAuth tokens need.
    headers = {"Authorization": credentials.api_key.get_secret_value()}
    url = endpoint(connection, "/graphql")
    body = {"query": query, "variables": variables}
    response = await send(http, "linear", "POST", url, headers=headers, json=body)
    message, code = _first_error(json_or_none(response))
    if code is not None and code.upper() == "RATELIMITED":
        raise ToolError(
            f"linear is rate limiting this API key: {message}"[:400],
            code="linear_rate_limited",
            retryable=True,
            status=response.status_code,
        )
    if not response.is_success:
        raise status_error("linear", response, message)
    if message is not None:
        raise ToolError(
            f"linear answered with an error: {message}"[:400], code="linear_graphql_error"
        )
    answer = json_body("linear", response)
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict):
        raise ToolError("linear answered without data", code="linear_bad_response")
    return data
