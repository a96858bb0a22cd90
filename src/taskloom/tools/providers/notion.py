"""Notion: tasks are pages of a database (REST API version 2022-06-28). A task's title is the
database's title property; its status is a property of Notion's `status` type, "Status"
unless the arguments name another."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

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

NOTION_VERSION = "2022-06-28"
_TEXT_CHARS = 2000  # Notion's limit for one rich-text item
_UUID = r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
# Page and database ids end up in URL paths: only UUIDs (with or without dashes) are accepted.
NotionId = Annotated[str, Field(pattern=_UUID)]
PropertyName = Annotated[str, Field(min_length=1, max_length=200)]


class NotionCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    token: SecretStr = Field(min_length=1, description="An internal integration token")


class NotionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    database_id: NotionId | None = Field(default=None, description="Default database of tasks")


class GetTasksArgs(ToolArgs):
    database_id: NotionId | None = Field(default=None, description="Overrides the connection's")
    status: str | None = Field(default=None, max_length=100, description="Only tasks in it")
    status_property: PropertyName = "Status"
    page_size: int = Field(default=100, ge=1, le=100)
    start_cursor: str | None = Field(default=None, max_length=200, description="A next_cursor")


class CreateTaskArgs(ToolArgs):
    database_id: NotionId | None = Field(default=None, description="Overrides the connection's")
    title: str = Field(min_length=1, max_length=_TEXT_CHARS)
    status: str | None = Field(default=None, max_length=100)
    content: str | None = Field(default=None, max_length=20_000, description="A paragraph")
    title_property: PropertyName = "Name"
    status_property: PropertyName = "Status"


class UpdateTaskArgs(ToolArgs):
    page_id: NotionId
    title: str | None = Field(default=None, min_length=1, max_length=_TEXT_CHARS)
    status: str | None = Field(default=None, max_length=100)
    title_property: PropertyName = "Name"
    status_property: PropertyName = "Status"

    @model_validator(mode="after")
    def _something_to_change(self) -> UpdateTaskArgs:
        if self.title is None and self.status is None:
            raise ValueError("give a title, a status or both")
        return self


class DeleteTaskArgs(ToolArgs):
    page_id: NotionId


TOOLS = [
    builtin_tool(
        "getTasks",
        GetTasksArgs,
        "List the tasks (pages) of a Notion database, optionally those in one status",
        read_only=True,
    ),
    builtin_tool(
        "createTask",
        CreateTaskArgs,
        "Create a task (page) in a Notion database, with an optional paragraph",
        read_only=False,
    ),
    builtin_tool(
        "updateTask", UpdateTaskArgs, "Change a Notion task's title and/or status", read_only=False
    ),
    builtin_tool(
        "deleteTask",
        DeleteTaskArgs,
        "Archive a Notion task (Notion's API cannot delete pages; archived pages "
        "stay restorable from the trash)",
        read_only=False,
    ),
]


def _rich_text(text: str) -> list[dict[str, Any]]:
    """`text` as rich-text items of at most 2000 characters each."""
    return [
        {"type": "text", "text": {"content": text[start : start + _TEXT_CHARS]}}
        for start in range(0, len(text), _TEXT_CHARS)
    ]


def _properties(
    title: str | None, status: str | None, title_property: str, status_property: str
) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    if title is not None:
        properties[title_property] = {"title": _rich_text(title)}
    if status is not None:
        properties[status_property] = {"status": {"name": status}}
    return properties


def _task(page: dict[str, Any], status_property: str) -> dict[str, Any]:
    """A page trimmed to what a workflow needs. The title is read from whichever property has
    the title type (every database has exactly one), whatever it is called."""
    properties: dict[str, Any] = page.get("properties") or {}
    title = next(
        (
            "".join(part.get("plain_text", "") for part in prop.get("title") or [])
            for prop in properties.values()
            if isinstance(prop, dict) and prop.get("type") == "title"
        ),
        None,
    )
    status_value = properties.get(status_property) or {}
    # A status property, or a select used as one in older databases.
    chosen = status_value.get("status") or status_value.get("select") or {}
    return {
        "id": page.get("id"),
        "title": title,
        "status": chosen.get("name"),
        "url": page.get("url"),
        "last_edited_time": page.get("last_edited_time"),
    }


class NotionProvider:
    """Tasks in a Notion database, through an internal integration token."""

    name: ClassVar[str] = "notion"
    default_base_url: ClassVar[str] = "https://api.notion.com"
    Credentials: ClassVar[type[BaseModel]] = NotionCredentials
    Config: ClassVar[type[BaseModel]] = NotionConfig

    async def tools(self, connection: Connection, http: Any) -> list[Tool]:
        return list(TOOLS)

    async def call(self, connection: Connection, http: Any, tool: str, args: dict[str, Any]) -> Any:
        if tool == "getTasks":
            return await self._get_tasks(connection, http, tool_args(GetTasksArgs, tool, args))
        if tool == "createTask":
            return await self._create_task(connection, http, tool_args(CreateTaskArgs, tool, args))
        if tool == "updateTask":
            return await self._update_task(connection, http, tool_args(UpdateTaskArgs, tool, args))
        if tool == "deleteTask":
            return await self._delete_task(connection, http, tool_args(DeleteTaskArgs, tool, args))
        raise ToolError(f"notion has no tool {tool[:100]!r}", code="unknown_tool")

    async def check(self, connection: Connection, http: Any) -> dict[str, Any]:
        user = await _request(connection, http, "GET", "/v1/users/me")
        return {"account": user.get("name") or user.get("id")}

    async def _get_tasks(
        self, connection: Connection, http: httpx.AsyncClient, args: GetTasksArgs
    ) -> dict[str, Any]:
        database_id = _database_id(connection, args.database_id)
        query: dict[str, Any] = {"page_size": args.page_size}
        if args.status is not None:
            query["filter"] = {"property": args.status_property, "status": {"equals": args.status}}
        if args.start_cursor is not None:
            query["start_cursor"] = args.start_cursor
        answer = await _request(
            connection, http, "POST", f"/v1/databases/{database_id}/query", query
        )
        return {
            "tasks": [_task(page, args.status_property) for page in answer.get("results") or []],
            "next_cursor": answer.get("next_cursor") if answer.get("has_more") else None,
        }

    async def _create_task(
        self, connection: Connection, http: httpx.AsyncClient, args: CreateTaskArgs
    ) -> dict[str, Any]:
        page: dict[str, Any] = {
            "parent": {"database_id": _database_id(connection, args.database_id)},
            "properties": _properties(
                args.title, args.status, args.title_property, args.status_property
            ),
        }
        if args.content:
            paragraph = {"rich_text": _rich_text(args.content)}
            page["children"] = [{"object": "block", "type": "paragraph", "paragraph": paragraph}]
        created = await _request(connection, http, "POST", "/v1/pages", page)
        return _task(created, args.status_property)

    async def _update_task(
        self, connection: Connection, http: httpx.AsyncClient, args: UpdateTaskArgs
    ) -> dict[str, Any]:
        properties = _properties(args.title, args.status, args.title_property, args.status_property)
        updated = await _request(
            connection, http, "PATCH", f"/v1/pages/{args.page_id}", {"properties": properties}
        )
        return _task(updated, args.status_property)

    async def _delete_task(
        self, connection: Connection, http: httpx.AsyncClient, args: DeleteTaskArgs
    ) -> dict[str, Any]:
        """Notion has no delete: the page is archived (moved to the trash), which is also what
        deleting a page in Notion's own app does."""
        archived = await _request(
            connection, http, "PATCH", f"/v1/pages/{args.page_id}", {"archived": True}
        )
        return {"id": archived.get("id"), "archived": bool(archived.get("archived"))}


def _database_id(connection: Connection, given: str | None) -> str:
    if given is not None:
        return given
    config = validated(
        NotionConfig, connection.config, what="the notion settings", code="invalid_config"
    )
    if config.database_id is None:
        raise ToolError(
            "no database_id: give one in the arguments or in the connection's settings",
            code="missing_database_id",
        )
    return config.database_id


async def _request(
    connection: Connection,
    http: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    credentials = validated(
        NotionCredentials,
        connection.credentials,
        what="the notion credentials",
        code="invalid_credentials",
    )
    headers = {
        "Authorization": f"Bearer {credentials.token.get_secret_value()}",
        "Notion-Version": NOTION_VERSION,
    }
    url = endpoint(connection, path)
    response = await send(http, "notion", method, url, headers=headers, json=body)
    if not response.is_success:
        error = json_or_none(response)
        detail = error.get("message") if isinstance(error, dict) else None
        raise status_error("notion", response, detail if isinstance(detail, str) else None)
    answer = json_body("notion", response)
    if not isinstance(answer, dict):
        raise ToolError(
            "notion answered with JSON that is not an object", code="notion_bad_response"
        )
    return answer
