"""GitHub: issues, pull requests and repositories through the REST API (version 2022-11-28),
on github.com or GitHub Enterprise Server (base URL "https://<host>/api/v3")."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from taskloom import __version__
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

API_VERSION = "2022-11-28"
# Owner, repository and organization names end up in URL paths: at least one character that
# is not a dot, so "." and ".." cannot climb the path.
_SEGMENT = r"^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=_SEGMENT)]
Label = Annotated[str, Field(min_length=1, max_length=100)]
Login = Annotated[str, Field(min_length=1, max_length=100, pattern=_SEGMENT)]
PerPage = Annotated[int, Field(ge=1, le=100)]
Page = Annotated[int, Field(ge=1)]


class GitHubCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    token: SecretStr = Field(min_length=1, description="A fine-grained or classic access token")


class GitHubConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: Name | None = Field(default=None, description="Default owner (user or organization)")
    repo: Name | None = Field(default=None, description="Default repository")


class _InRepository(ToolArgs):
    owner: Name | None = Field(default=None, description="Overrides the connection's")
    repo: Name | None = Field(default=None, description="Overrides the connection's")


class GetIssuesArgs(_InRepository):
    state: Literal["open", "closed", "all"] = "open"
    labels: list[Label] | None = Field(default=None, max_length=20, description="All of these")
    per_page: PerPage = 30
    page: Page = 1


class CreateIssueArgs(_InRepository):
    title: str = Field(min_length=1, max_length=256)
    body: str | None = Field(default=None, max_length=65_536)
    labels: list[Label] | None = Field(default=None, max_length=100)
    assignees: list[Login] | None = Field(default=None, max_length=10)


class UpdateIssueArgs(_InRepository):
    number: int = Field(ge=1)
    title: str | None = Field(default=None, min_length=1, max_length=256)
    body: str | None = Field(default=None, max_length=65_536)
    state: Literal["open", "closed"] | None = None
    labels: list[Label] | None = Field(default=None, max_length=100, description="Replaces all")

    @model_validator(mode="after")
    def _something_to_change(self) -> UpdateIssueArgs:
        if all(value is None for value in (self.title, self.body, self.state, self.labels)):
            raise ValueError("give at least one of title, body, state, labels")
        return self


class GetPullRequestsArgs(_InRepository):
    state: Literal["open", "closed", "all"] = "open"
    per_page: PerPage = 30
    page: Page = 1


class CreatePullRequestArgs(_InRepository):
    title: str = Field(min_length=1, max_length=256)
    head: str = Field(min_length=1, max_length=255, description="Branch, or owner:branch")
    base: str = Field(min_length=1, max_length=255, description="Branch to merge into")
    body: str | None = Field(default=None, max_length=65_536)
    draft: bool | None = None


class GetRepositoriesArgs(ToolArgs):
    org: Name | None = Field(default=None, description="An organization; else the token's user")
    per_page: PerPage = 30
    page: Page = 1


TOOLS = [
    builtin_tool(
        "getIssues",
        GetIssuesArgs,
        "List a repository's issues (pull requests left out, so a page may hold "
        "fewer than per_page)",
        read_only=True,
    ),
    builtin_tool("createIssue", CreateIssueArgs, "Open an issue in a repository", read_only=False),
    builtin_tool(
        "updateIssue",
        UpdateIssueArgs,
        "Change an issue's title, body, state (open/closed) or labels",
        read_only=False,
    ),
    builtin_tool(
        "getPullRequests", GetPullRequestsArgs, "List a repository's pull requests", read_only=True
    ),
    builtin_tool(
        "createPullRequest",
        CreatePullRequestArgs,
        "Open a pull request from head into base",
        read_only=False,
    ),
    builtin_tool(
        "getRepositories",
        GetRepositoriesArgs,
        "List the token user's repositories, or an organization's",
        read_only=True,
    ),
]


def _login(account: Any) -> Any:
    return account.get("login") if isinstance(account, dict) else None


def _issue(issue: dict[str, Any]) -> dict[str, Any]:
    return {
        "number": issue.get("number"),
        "title": issue.get("title"),
        "state": issue.get("state"),
        "html_url": issue.get("html_url"),
        "user": _login(issue.get("user")),
        "labels": [label.get("name") for label in issue.get("labels") or []],
        "assignees": [_login(person) for person in issue.get("assignees") or []],
        "comments": issue.get("comments"),
        "body": issue.get("body"),
        "created_at": issue.get("created_at"),
        "updated_at": issue.get("updated_at"),
    }


def _pull(pull: dict[str, Any]) -> dict[str, Any]:
    return {
        "number": pull.get("number"),
        "title": pull.get("title"),
        "state": pull.get("state"),
        "html_url": pull.get("html_url"),
        "user": _login(pull.get("user")),
        "head": (pull.get("head") or {}).get("ref"),
        "base": (pull.get("base") or {}).get("ref"),
        "draft": pull.get("draft"),
        "merged_at": pull.get("merged_at"),
        "created_at": pull.get("created_at"),
    }


def _repository_summary(repo: dict[str, Any]) -> dict[str, Any]:
    return {
        "full_name": repo.get("full_name"),
        "name": repo.get("name"),
        "owner": _login(repo.get("owner")),
        "private": repo.get("private"),
        "html_url": repo.get("html_url"),
        "description": repo.get("description"),
        "default_branch": repo.get("default_branch"),
    }


class GitHubProvider:
    """Issues, pull requests and repositories, through an access token."""

    name: ClassVar[str] = "github"
    default_base_url: ClassVar[str] = "https://api.github.com"
    Credentials: ClassVar[type[BaseModel]] = GitHubCredentials
    Config: ClassVar[type[BaseModel]] = GitHubConfig

    async def tools(self, connection: Connection, http: Any) -> list[Tool]:
        return list(TOOLS)

    async def call(self, connection: Connection, http: Any, tool: str, args: dict[str, Any]) -> Any:
        if tool == "getIssues":
            return await _get_issues(connection, http, tool_args(GetIssuesArgs, tool, args))
        if tool == "createIssue":
            return await _create_issue(connection, http, tool_args(CreateIssueArgs, tool, args))
        if tool == "updateIssue":
            return await _update_issue(connection, http, tool_args(UpdateIssueArgs, tool, args))
        if tool == "getPullRequests":
            return await _get_pulls(connection, http, tool_args(GetPullRequestsArgs, tool, args))
        if tool == "createPullRequest":
            return await _create_pull(
                connection, http, tool_args(CreatePullRequestArgs, tool, args)
            )
        if tool == "getRepositories":
            return await _get_repositories(
                connection, http, tool_args(GetRepositoriesArgs, tool, args)
            )
        raise ToolError(f"github has no tool {tool[:100]!r}", code="unknown_tool")

    async def check(self, connection: Connection, http: Any) -> dict[str, Any]:
        user = _object(await _request(connection, http, "GET", "/user"))
        return {"account": user.get("login")}


async def _get_issues(
    connection: Connection, http: httpx.AsyncClient, args: GetIssuesArgs
) -> dict[str, Any]:
    query = args.model_dump(include={"state", "per_page", "page"})
    if args.labels:
        query["labels"] = ",".join(args.labels)
    path = _repo_path(connection, args, "/issues")
    response = await _request(connection, http, "GET", path, params=query)
    # This endpoint lists pull requests too: they are the entries with "pull_request".
    issues = [_issue(item) for item in _list(response) if "pull_request" not in item]
    return {"issues": issues, "next_page": _next_page(response)}


async def _create_issue(
    connection: Connection, http: httpx.AsyncClient, args: CreateIssueArgs
) -> dict[str, Any]:
    fields = args.model_dump(include={"title", "body", "labels", "assignees"}, exclude_none=True)
    path = _repo_path(connection, args, "/issues")
    return _issue(_object(await _request(connection, http, "POST", path, json=fields)))


async def _update_issue(
    connection: Connection, http: httpx.AsyncClient, args: UpdateIssueArgs
) -> dict[str, Any]:
    fields = args.model_dump(include={"title", "body", "state", "labels"}, exclude_none=True)
    path = _repo_path(connection, args, f"/issues/{args.number}")
    return _issue(_object(await _request(connection, http, "PATCH", path, json=fields)))


async def _get_pulls(
    connection: Connection, http: httpx.AsyncClient, args: GetPullRequestsArgs
) -> dict[str, Any]:
    query = args.model_dump(include={"state", "per_page", "page"})
    path = _repo_path(connection, args, "/pulls")
    response = await _request(connection, http, "GET", path, params=query)
    return {"pull_requests": [_pull(p) for p in _list(response)], "next_page": _next_page(response)}


async def _create_pull(
    connection: Connection, http: httpx.AsyncClient, args: CreatePullRequestArgs
) -> dict[str, Any]:
    fields = args.model_dump(include={"title", "head", "base", "body", "draft"}, exclude_none=True)
    path = _repo_path(connection, args, "/pulls")
    return _pull(_object(await _request(connection, http, "POST", path, json=fields)))


async def _get_repositories(
    connection: Connection, http: httpx.AsyncClient, args: GetRepositoriesArgs
) -> dict[str, Any]:
    path = f"/orgs/{args.org}/repos" if args.org else "/user/repos"
    query = args.model_dump(include={"per_page", "page"})
    response = await _request(connection, http, "GET", path, params=query)
    repositories = [_repository_summary(item) for item in _list(response)]
    return {"repositories": repositories, "next_page": _next_page(response)}


def _repo_path(connection: Connection, args: _InRepository, rest: str) -> str:
    """/repos/{owner}/{repo}{rest}, each part from the arguments, else the connection's."""
    owner, repo = args.owner, args.repo
    if owner is None or repo is None:
        config = validated(
            GitHubConfig, connection.config, what="the github settings", code="invalid_config"
        )
        owner, repo = owner or config.owner, repo or config.repo
    if owner is None or repo is None:
        raise ToolError(
            "no repository: give owner and repo in the arguments or the connection's settings",
            code="missing_repository",
        )
    return f"/repos/{owner}/{repo}{rest}"


def _object(response: httpx.Response) -> dict[str, Any]:
    body = json_body("github", response)
    if not isinstance(body, dict):
        raise ToolError(
            "github answered with JSON that is not an object", code="github_bad_response"
        )
    return body


def _list(response: httpx.Response) -> list[dict[str, Any]]:
    body = json_body("github", response)
    if not isinstance(body, list):
        raise ToolError("github answered with JSON that is not a list", code="github_bad_response")
    return [item for item in body if isinstance(item, dict)]


def _next_page(response: httpx.Response) -> int | None:
    """The page number of the Link header's rel="next", if there is one."""
    url = response.links.get("next", {}).get("url")
    page = httpx.URL(url).params.get("page") if url else None
    return int(page) if page and page.isdigit() else None


def _detail(body: Any) -> str | None:
    """GitHub's `message`, with the first validation error of a 422 after it."""
    if not isinstance(body, dict) or not isinstance(body.get("message"), str):
        return None
    message: str = body["message"]
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        if isinstance(first.get("message"), str):
            message = f"{message} ({first['message']})"
        elif first.get("field") and first.get("code"):
            message = f"{message} ({first['field']}: {first['code']})"
    return message


async def _request(
    connection: Connection,
    http: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    json: dict[str, Any] | None = None,
    params: dict[str, str | int] | None = None,
) -> httpx.Response:
    credentials = validated(
        GitHubCredentials,
        connection.credentials,
        what="the github credentials",
        code="invalid_credentials",
    )
    headers = {
        "Authorization": f"Bearer {credentials.token.get_secret_value()}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": API_VERSION,
        "User-Agent": f"Taskloom/{__version__}",  # GitHub refuses requests without one
    }
    url = endpoint(connection, path)
    response = await send(http, "github", method, url, headers=headers, json=json, params=params)
    if response.is_success:
        return response
    detail = _detail(json_or_none(response))
    if response.status_code == 403 and (
        response.headers.get("x-ratelimit-remaining") == "0" or "retry-after" in response.headers
    ):
        # The primary (remaining 0) or a secondary (retry-after) rate limit: wait, then retry.
        raise ToolError(
            f"github is rate limiting this token: {detail or 'HTTP 403'}"[:400],
            code="github_rate_limited",
            retryable=True,
            status=403,
        )
    raise status_error("github", response, detail)
