"""In-memory stand-ins for the Notion, Linear and GitHub APIs, each an HTTP server on
127.0.0.1 in a background thread. They answer in the real APIs' shapes (objects, pagination,
error bodies, 401s) and check what the real ones check (auth, Notion-Version, User-Agent), so a
provider that works against them sends what the real API expects. Every request is recorded.

    with FakeGitHub() as github:
        github.fail_next(2, status=503)   # the next two requests fail in GitHub's error shape
        github.delay_seconds = 2          # answers come late (timeout tests)
        ... github.requests[-1].json ...
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, urlencode, urlsplit

# --- the server every fake runs on ---------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # as received, path prefix included, query excluded
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    json: Any  # the parsed body, None when there was none (or it was not JSON)


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class ApiError(Exception):
    """Raised by a route: answered with the API's error shape, `extra` merged into the body."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout tests) closed the socket mid-answer


class _Handler(BaseHTTPRequestHandler):
    fake: ClassVar[FakeApi]
    protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs: a client may reuse a socket

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake.connections += 1  # one handler per accepted TCP connection

    def finish(self) -> None:
        super().finish()
        with self.fake._lock:
            self.fake.closed += 1  # the connection ended (the client closed it)

    def do_GET(self) -> None:
        self.fake._handle(self)

    do_POST = do_PATCH = do_PUT = do_DELETE = do_GET

    def log_message(self, *args: Any) -> None:
        pass


class FakeApi:
    """The machinery shared by the fakes; subclasses give `error_body`, `refuse` and `route`."""

    default_token: ClassVar[str]
    time_format: ClassVar[str] = "%Y-%m-%dT%H:%M:%S.000Z"

    def __init__(self, *, token: str | None = None, path_prefix: str = "") -> None:
        self.token = token or self.default_token
        self.path_prefix = path_prefix.rstrip("/")
        self.requests: list[RecordedRequest] = []
        self.connections = 0  # TCP connections accepted so far
        self.closed = 0  # and ended
        self.delay_seconds = 0.0
        self.origin = ""  # http://127.0.0.1:<port>, once started
        self._planned: list[Answer] = []
        self._always: Answer | None = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._ticks = itertools.count(1)

    @property
    def base_url(self) -> str:
        return self.origin + self.path_prefix

    def start(self) -> Self:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll interval: stop() waits up to one interval (0.5 s by default).
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes answers sleeping out `delay_seconds`
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def fail_next(
        self, n: int, status: int = 500, *, headers: dict[str, str] | None = None
    ) -> None:
        """The next `n` requests fail with `status` in the API's error shape."""
        with self._lock:
            self._planned.extend(self._failure(status, headers) for _ in range(n))

    def fail_always(self, status: int, *, headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self._always = self._failure(status, headers)

    def recover(self) -> None:
        with self._lock:
            self._planned.clear()
            self._always = None

    def plan(self, answer: Answer, times: int = 1) -> None:
        """The next `times` requests get `answer`, whatever they ask."""
        with self._lock:
            self._planned.extend([answer] * times)

    def now(self) -> str:
        """A timestamp one second later than the previous one (deterministic, increasing)."""
        moment = datetime(2024, 5, 1, 12, 0, tzinfo=UTC) + timedelta(seconds=next(self._ticks))
        return moment.strftime(self.time_format)

    # --- what each API defines ----------------------------------------------------------

    def error_body(self, status: int, message: str) -> Any:
        raise NotImplementedError

    def refuse(self, request: RecordedRequest) -> None:
        """Raise ApiError when the headers would not pass the real API (auth included)."""

    def route(self, request: RecordedRequest, path: str) -> Answer:
        raise NotImplementedError

    # --- plumbing -------------------------------------------------------------------------

    def _failure(self, status: int, headers: dict[str, str] | None) -> Answer:
        extra = {"retry-after": "1"} if status == 429 else {}
        body = self.error_body(status, HTTPStatus(status).phrase)
        return Answer(status, body, {**extra, **(headers or {})})

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        raw = handler.rfile.read(int(handler.headers.get("content-length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = RecordedRequest(
            method=handler.command,
            path=url.path,
            query=dict(parse_qsl(url.query, keep_blank_values=True)),
            headers={name.lower(): value for name, value in handler.headers.items()},
            json=body,
        )
        with self._lock:
            self.requests.append(request)
        if self.delay_seconds:
            self._stopping.wait(self.delay_seconds)
        with self._lock:
            answer = self._answer(request, bad_json=bool(raw) and body is None)
        data = json.dumps(answer.body).encode()
        handler.send_response(answer.status)
        handler.send_header("content-type", "application/json; charset=utf-8")
        handler.send_header("content-length", str(len(data)))
        for name, value in answer.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _answer(self, request: RecordedRequest, *, bad_json: bool) -> Answer:
        if self._planned:
            return self._planned.pop(0)
        if self._always is not None:
            return self._always
        try:
            self.refuse(request)
            if bad_json:
                raise ApiError(400, "the body is not valid JSON")
            if not request.path.startswith(self.path_prefix + "/"):
                raise ApiError(404, "Not Found")
            return self.route(request, request.path.removeprefix(self.path_prefix))
        except ApiError as error:
            return Answer(
                error.status, {**self.error_body(error.status, error.message), **error.extra}
            )


def _page(items: list[Any], per_page: int, page: int) -> tuple[list[Any], bool]:
    start = (page - 1) * per_page
    return items[start : start + per_page], len(items) > start + per_page


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --- Notion ----------------------------------------------------------------------------------

_NOTION_CODES = {
    400: "validation_error",
    401: "unauthorized",
    403: "restricted_resource",
    404: "object_not_found",
    409: "conflict_error",
    429: "rate_limited",
    500: "internal_server_error",
    502: "bad_gateway",
    503: "service_unavailable",
}


@dataclass
class NotionDatabase:
    id: str
    title_property: str
    status_property: str
    status_options: list[str]


def _compact(notion_id: Any) -> str:
    """Notion accepts ids with or without dashes."""
    return str(notion_id).replace("-", "").lower()


def _notion_text(content: str) -> dict[str, Any]:
    return {
        "type": "text",
        "text": {"content": content, "link": None},
        "plain_text": content,
        "href": None,
    }


class FakeNotion(FakeApi):
    """Notion API 2022-06-28: a bot user, databases of pages, archiving instead of deleting.
    `database_id` is a database with a "Name" title and a "Status" status property."""

    default_token = "secret_fake_notion_integration_token"
    versions: ClassVar[set[str]] = {"2021-08-16", "2022-02-22", "2022-06-28"}

    def __init__(self, *, token: str | None = None, path_prefix: str = "") -> None:
        super().__init__(token=token, path_prefix=path_prefix)
        self.bot = {"id": str(uuid.uuid4()), "name": "Taskloom Bot"}
        self.databases: dict[str, NotionDatabase] = {}
        self.pages: dict[str, dict[str, Any]] = {}  # compact id → page object
        self.blocks: dict[str, list[dict[str, Any]]] = {}  # compact page id → child blocks
        self.database_id = self.add_database()

    def add_database(
        self,
        *,
        title_property: str = "Name",
        status_property: str = "Status",
        status_options: tuple[str, ...] = ("Not started", "In progress", "Done"),
    ) -> str:
        database_id = str(uuid.uuid4())
        self.databases[_compact(database_id)] = NotionDatabase(
            database_id, title_property, status_property, list(status_options)
        )
        return database_id

    def error_body(self, status: int, message: str) -> Any:
        code = _NOTION_CODES.get(status, "internal_server_error")
        return {"object": "error", "status": status, "code": code, "message": message}

    def refuse(self, request: RecordedRequest) -> None:
        version = request.headers.get("notion-version")
        if version is None:
            raise ApiError(
                400,
                "Notion-Version header failed validation: Notion-Version header should be "
                "defined, instead was `undefined`.",
                code="missing_version",
            )
        if version not in self.versions:
            raise ApiError(
                400, f"Notion-Version `{version}` is not supported.", code="invalid_request"
            )
        if request.headers.get("authorization") != f"Bearer {self.token}":
            raise ApiError(401, "API token is invalid.")

    def route(self, request: RecordedRequest, path: str) -> Answer:
        body = request.json if isinstance(request.json, dict) else {}
        if request.method == "GET" and path == "/v1/users/me":
            bot = {"owner": {"type": "workspace", "workspace": True}, "workspace_name": "Fake"}
            return Answer(200, {"object": "user", **self.bot, "type": "bot", "bot": bot})
        if request.method == "POST" and (
            match := re.fullmatch(r"/v1/databases/([^/]+)/query", path)
        ):
            return Answer(200, self._query(self._database(match[1]), body))
        if request.method == "POST" and path == "/v1/pages":
            _only(body, {"parent", "properties", "children", "icon", "cover"})
            database = self._database((body.get("parent") or {}).get("database_id"))
            blocks = self._blocks(body.get("children") or [])
            page = self._new_page(database, body.get("properties") or {})
            self.blocks[_compact(page["id"])] = blocks
            return Answer(200, page)
        if match := re.fullmatch(r"/v1/pages/([^/]+)", path):
            found = self.pages.get(_compact(match[1]))
            if found is None:
                raise ApiError(404, f"Could not find page with ID: {match[1]}.")
            if request.method == "PATCH":
                return Answer(200, self._update(found, body))
            if request.method == "GET":
                return Answer(200, found)
        if request.method == "GET" and (
            match := re.fullmatch(r"/v1/blocks/([^/]+)/children", path)
        ):
            results = self.blocks.get(_compact(match[1]), [])
            return Answer(
                200, {"object": "list", "results": results, "next_cursor": None, "has_more": False}
            )
        raise ApiError(400, "Invalid request URL.", code="invalid_request_url")

    def _database(self, database_id: Any) -> NotionDatabase:
        database = self.databases.get(_compact(database_id))
        if database is None:
            raise ApiError(
                404,
                f"Could not find database with ID: {database_id}. Make sure the relevant pages "
                "and databases are shared with your integration.",
            )
        return database

    def _query(self, database: NotionDatabase, body: dict[str, Any]) -> dict[str, Any]:
        _only(body, {"filter", "sorts", "start_cursor", "page_size", "filter_properties"})
        page_size = body.get("page_size", 100)
        if not isinstance(page_size, int) or not 1 <= page_size <= 100:
            raise ApiError(
                400,
                "body failed validation: body.page_size should be ≤ `100`, "
                f"instead was `{page_size}`.",
            )
        pages = [
            page
            for page in self.pages.values()
            if _compact(page["parent"]["database_id"]) == _compact(database.id)
            and not page["archived"]
        ]
        if (wanted := body.get("filter")) is not None:
            name = wanted.get("property")
            if name != database.status_property or "status" not in wanted:
                raise ApiError(400, f"Could not find property with name or id: {name}")
            equals = wanted["status"].get("equals")
            pages = [
                page
                for page in pages
                if (page["properties"][name]["status"] or {}).get("name") == equals
            ]
        start = 0
        if (cursor := body.get("start_cursor")) is not None:
            ids = [page["id"] for page in pages]
            if cursor not in ids:
                raise ApiError(400, f"start_cursor provided is invalid: {cursor}")
            start = ids.index(cursor)
        results, rest = pages[start : start + page_size], pages[start + page_size :]
        return {
            "object": "list",
            "results": results,
            "next_cursor": rest[0]["id"] if rest else None,
            "has_more": bool(rest),
            "type": "page_or_database",
            "page_or_database": {},
        }

    def _new_page(self, database: NotionDatabase, properties: dict[str, Any]) -> dict[str, Any]:
        page_id, now = str(uuid.uuid4()), self.now()
        page: dict[str, Any] = {
            "object": "page",
            "id": page_id,
            "created_time": now,
            "last_edited_time": now,
            "archived": False,
            "in_trash": False,
            "parent": {"type": "database_id", "database_id": database.id},
            "properties": {
                database.title_property: {"id": "title", "type": "title", "title": []},
                database.status_property: {
                    "id": "stat",
                    "type": "status",
                    "status": {"id": "s0", "name": database.status_options[0], "color": "default"},
                },
            },
        }
        self._set_properties(database, page, properties)
        page["url"] = (
            f"https://www.notion.so/{_slug(self._title(database, page))}-{_compact(page_id)}"
        )
        self.pages[_compact(page_id)] = page
        return page

    def _update(self, page: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        _only(body, {"properties", "archived", "in_trash", "icon", "cover"})
        if body.get("properties"):
            if page["archived"]:
                raise ApiError(
                    400,
                    "Can't edit block that is archived. "
                    "You must unarchive the block before editing.",
                )
            self._set_properties(
                self._database(page["parent"]["database_id"]), page, body["properties"]
            )
        if "archived" in body:
            page["archived"] = page["in_trash"] = bool(body["archived"])
        page["last_edited_time"] = self.now()
        return page

    def _set_properties(
        self, database: NotionDatabase, page: dict[str, Any], given: dict[str, Any]
    ) -> None:
        for name, value in given.items():
            if (
                name == database.title_property
                and isinstance(value, dict)
                and isinstance(value.get("title"), list)
            ):
                texts = [
                    _text_content(item, f"body.properties.{name}.title") for item in value["title"]
                ]
                page["properties"][name]["title"] = [_notion_text(text) for text in texts]
            elif name == database.status_property and isinstance(value, dict) and "status" in value:
                option = (value["status"] or {}).get("name")
                if option not in database.status_options:
                    raise ApiError(
                        400, f'Invalid status option. Status option "{option}" does not exist".'
                    )
                status = {
                    "id": f"s{database.status_options.index(option)}",
                    "name": option,
                    "color": "default",
                }
                page["properties"][name]["status"] = status
            elif name in (database.title_property, database.status_property):
                raise ApiError(
                    400, f"body failed validation: body.properties.{name} has the wrong type."
                )
            else:
                raise ApiError(400, f"{name} is not a property that exists.")

    def _blocks(self, children: list[Any]) -> list[dict[str, Any]]:
        blocks = []
        for child in children:
            if not isinstance(child, dict) or child.get("type") != "paragraph":
                raise ApiError(400, "body failed validation: children should be paragraph blocks.")
            texts = [
                _text_content(item, "body.children.paragraph.rich_text")
                for item in child["paragraph"]["rich_text"]
            ]
            paragraph = {"rich_text": [_notion_text(text) for text in texts]}
            blocks.append(
                {
                    "object": "block",
                    "id": str(uuid.uuid4()),
                    "type": "paragraph",
                    "paragraph": paragraph,
                }
            )
        return blocks

    def _title(self, database: NotionDatabase, page: dict[str, Any]) -> str:
        return "".join(
            part["plain_text"] for part in page["properties"][database.title_property]["title"]
        )


def _text_content(item: Any, where: str) -> str:
    content = item.get("text", {}).get("content") if isinstance(item, dict) else None
    if not isinstance(content, str):
        raise ApiError(400, f"body failed validation: {where}.text.content should be defined.")
    if len(content) > 2000:
        raise ApiError(
            400,
            f"body failed validation: {where}.text.content.length should be ≤ `2000`, "
            f"instead was `{len(content)}`.",
        )
    return content


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    if unknown := sorted(set(body) - allowed):
        raise ApiError(400, f"body failed validation: {unknown[0]} should be not present.")


# --- Linear ----------------------------------------------------------------------------------

_ROOT_FIELD = re.compile(r"\{\s*(\w+)")
_CREATE_INPUT = {"teamId", "title", "description", "priority", "stateId", "assigneeId", "labelIds"}
_UPDATE_INPUT = {"title", "description", "priority", "stateId", "assigneeId", "labelIds"}


def _graphql_error(message: str, code: str, **extensions: Any) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code, **extensions}}]}


def _issue_node(issue: dict[str, Any]) -> dict[str, Any]:
    """What the GraphQL answer holds of a stored issue (not its team, which is bookkeeping)."""
    return {key: value for key, value in issue.items() if key != "team"}


class FakeLinear(FakeApi):
    """Linear's GraphQL API at POST /graphql, knowing the operations the provider uses (viewer,
    teams, issues, issueCreate, issueUpdate), recognized by their root field. Values must travel
    as variables: a query with a string literal in it is refused."""

    default_token = "lin_api_fakelinearpersonalapikey"

    def __init__(self, *, token: str | None = None, path_prefix: str = "") -> None:
        super().__init__(token=token, path_prefix=path_prefix)
        self.viewer = {"id": str(uuid.uuid4()), "name": "Ada Lovelace"}
        self.teams = [self._team("ENG", "Engineering"), self._team("OPS", "Operations")]
        self.issues: list[dict[str, Any]] = []
        self.refuse_mutations = False  # mutations answer success: false

    @staticmethod
    def _team(key: str, name: str) -> dict[str, Any]:
        states = [
            {"id": str(uuid.uuid4()), "name": state} for state in ("Todo", "In Progress", "Done")
        ]
        return {"id": str(uuid.uuid4()), "key": key, "name": name, "states": states, "next": 1}

    def state_id(self, team_key: str, name: str) -> str:
        team = next(team for team in self.teams if team["key"] == team_key)
        return str(next(state["id"] for state in team["states"] if state["name"] == name))

    def fail_next_graphql(self, n: int, message: str, code: str, *, status: int = 200) -> None:
        """The next `n` requests answer `status` with one GraphQL error (code in extensions)."""
        self.plan(Answer(status, {"data": None, **_graphql_error(message, code)}), n)

    def rate_limit_next(self, n: int = 1) -> None:
        """Linear's rate limit: HTTP 400 with a RATELIMITED error, not a 429."""
        self.fail_next_graphql(n, "Rate limit exceeded", "RATELIMITED", status=400)

    def error_body(self, status: int, message: str) -> Any:
        code = "INTERNAL_SERVER_ERROR" if status >= 500 else "INVALID_INPUT"
        return _graphql_error(message, code)

    def refuse(self, request: RecordedRequest) -> None:
        if request.headers.get("authorization") != self.token:
            raise ApiError(
                401,
                "Authentication required, not authenticated",
                errors=[
                    {
                        "message": "Authentication required, not authenticated",
                        "extensions": {
                            "type": "authentication error",
                            "code": "AUTHENTICATION_ERROR",
                            "statusCode": 401,
                            "userPresentableMessage": "You need to authenticate "
                            "to access this operation.",
                        },
                    }
                ],
            )

    def route(self, request: RecordedRequest, path: str) -> Answer:
        if request.method != "POST" or path != "/graphql":
            raise ApiError(404, "Not Found")
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise ApiError(400, "Content-Type must be application/json")
        body = request.json if isinstance(request.json, dict) else {}
        query, variables = body.get("query"), body.get("variables") or {}
        if not isinstance(query, str) or not (match := _ROOT_FIELD.search(query)):
            raise ApiError(400, "Must provide query string.")
        if '"' in query:
            raise ApiError(400, "fake Linear: values must travel as variables, not in the query")
        operation = match[1]
        if operation == "viewer":
            return Answer(200, {"data": {"viewer": self.viewer}})
        if operation == "teams":
            teams = [{key: team[key] for key in ("id", "key", "name")} for team in self.teams]
            return Answer(200, {"data": {"teams": {"nodes": teams[: variables.get("first", 50)]}}})
        if operation == "issues":
            return Answer(200, {"data": {"issues": self._issues(variables)}})
        if operation in ("issueCreate", "issueUpdate"):
            return self._mutate(operation, variables)
        raise ApiError(400, f'Cannot query field "{operation}" on type "Query".')

    def _issues(self, variables: dict[str, Any]) -> dict[str, Any]:
        wanted = variables.get("filter") or {}
        team_id = wanted.get("team", {}).get("id", {}).get("eq")
        state = wanted.get("state", {}).get("name", {}).get("eq")
        issues = [
            issue
            for issue in self.issues
            if (team_id is None or issue["team"]["id"] == team_id)
            and (state is None or issue["state"]["name"] == state)
        ]
        start = 0
        if (after := variables.get("after")) is not None:
            start = next(
                (i + 1 for i, issue in enumerate(issues) if issue["id"] == after), len(issues)
            )
        nodes = issues[start : start + variables["first"]]
        more = len(issues) > start + len(nodes)
        end = nodes[-1]["id"] if nodes else None
        return {
            "nodes": [_issue_node(issue) for issue in nodes],
            "pageInfo": {"hasNextPage": more, "endCursor": end},
        }

    def _mutate(self, operation: str, variables: dict[str, Any]) -> Answer:
        given = variables.get("input") or {}
        allowed = _CREATE_INPUT if operation == "issueCreate" else _UPDATE_INPUT
        if unknown := sorted(set(given) - allowed):
            kind = "IssueCreateInput" if operation == "issueCreate" else "IssueUpdateInput"
            message = (
                f'Variable "$input" got invalid value; Field "{unknown[0]}" '
                f'is not defined by type "{kind}".'
            )
            return Answer(400, _graphql_error(message, "GRAPHQL_VALIDATION_FAILED"))
        if self.refuse_mutations:
            return Answer(200, {"data": {operation: {"success": False, "issue": None}}})
        if operation == "issueCreate":
            issue = self._new_issue(given)
        else:
            issue = self._update_issue(variables.get("id"), given)
        return Answer(200, {"data": {operation: {"success": True, "issue": _issue_node(issue)}}})

    def _update_issue(self, issue_id: Any, given: dict[str, Any]) -> dict[str, Any]:
        issue = next((i for i in self.issues if issue_id in (i["id"], i["identifier"])), None)
        if issue is None:
            raise ApiError(200, "Entity not found: Issue", data=None)
        if "stateId" in given:
            states = issue["team"]["states"]
            state = next((s for s in states if s["id"] == given["stateId"]), None)
            if state is None:
                raise ApiError(200, "Entity not found: WorkflowState", data=None)
            issue["state"] = {"id": state["id"], "name": state["name"]}
        issue.update(
            {key: given[key] for key in ("title", "description", "priority") if key in given}
        )
        issue["updatedAt"] = self.now()
        return issue

    def _new_issue(self, given: dict[str, Any]) -> dict[str, Any]:
        team = next((team for team in self.teams if team["id"] == given.get("teamId")), None)
        if team is None:
            raise ApiError(200, "Entity not found: Team", data=None)
        identifier = f"{team['key']}-{team['next']}"
        team["next"] += 1
        issue = {
            "id": str(uuid.uuid4()),
            "identifier": identifier,
            "title": given["title"],
            "description": given.get("description"),
            "priority": given.get("priority", 0),
            "url": f"https://linear.app/fake/issue/{identifier.lower()}/{_slug(given['title'])}",
            "state": {"id": team["states"][0]["id"], "name": team["states"][0]["name"]},
            "assignee": None,
            "team": team,
            "createdAt": self.now(),
        }
        self.issues.append(issue)
        return issue


# --- GitHub ----------------------------------------------------------------------------------

_GITHUB_DOCS = "https://docs.github.com/rest"
_GITHUB_VERSIONS = {"2022-11-28"}


class FakeGitHub(FakeApi):
    """GitHub's REST API: the token's user `octocat`, its repository octocat/hello-world and the
    organization repository octo-org/widgets, each with branches main and feature. Issues and
    pull requests share numbers, and the issues list includes pull requests, as on GitHub."""

    default_token = "ghp_fakegithubpersonalaccesstoken0000"
    time_format = "%Y-%m-%dT%H:%M:%SZ"

    def __init__(self, *, token: str | None = None, path_prefix: str = "") -> None:
        super().__init__(token=token, path_prefix=path_prefix)
        self.user = {"login": "octocat", "id": 583231, "type": "User"}
        self.orgs = {"octo-org"}
        self.repos: dict[tuple[str, str], dict[str, Any]] = {}
        self.add_repo("octocat", "hello-world")
        self.add_repo("octo-org", "widgets", private=True)

    def add_repo(self, owner: str, name: str, *, private: bool = False) -> dict[str, Any]:
        repo = {
            "id": len(self.repos) + 1,
            "name": name,
            "full_name": f"{owner}/{name}",
            "owner": {"login": owner, "id": 1000 + len(self.repos)},
            "private": private,
            "html_url": f"https://github.com/{owner}/{name}",
            "description": f"The {name} repository",
            "default_branch": "main",
            "branches": {"main", "feature"},
            "items": [],  # issues and pull requests, by number - 1
        }
        self.repos[(owner, name)] = repo
        return repo

    def error_body(self, status: int, message: str) -> Any:
        return {"message": message, "documentation_url": _GITHUB_DOCS, "status": str(status)}

    def refuse(self, request: RecordedRequest) -> None:
        if not request.headers.get("user-agent"):
            raise ApiError(
                403,
                "Request forbidden by administrative rules. Please make sure your request has "
                "a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-"
                "rest-api#user-agent-required). Check https://developer.github.com for other "
                "possible causes.",
            )
        version = request.headers.get("x-github-api-version")
        if version is not None and version not in _GITHUB_VERSIONS:
            raise ApiError(400, f"API version '{version}' is not supported.")
        authorization = request.headers.get("authorization")
        if authorization is None:
            raise ApiError(401, "Requires authentication")
        if authorization not in (f"Bearer {self.token}", f"token {self.token}"):
            raise ApiError(401, "Bad credentials")

    def route(self, request: RecordedRequest, path: str) -> Answer:
        method, body = request.method, request.json if isinstance(request.json, dict) else {}
        if method == "GET" and path == "/user":
            return Answer(200, self.user)
        if method == "GET" and path == "/user/repos":
            return self._listing(
                request,
                [r for r in self.repos.values() if r["owner"]["login"] == self.user["login"]],
                _repo_json,
            )
        if method == "GET" and (match := re.fullmatch(r"/orgs/([^/]+)/repos", path)):
            if match[1] not in self.orgs:
                raise ApiError(404, "Not Found")
            return self._listing(
                request,
                [r for r in self.repos.values() if r["owner"]["login"] == match[1]],
                _repo_json,
            )
        match = re.fullmatch(r"/repos/([^/]+)/([^/]+)(/.*)", path)
        repo = self.repos.get((match[1], match[2])) if match else None
        if match is None or repo is None:
            raise ApiError(404, "Not Found")
        rest = match[3]
        if rest == "/issues" and method == "GET":
            wanted = {label for label in request.query.get("labels", "").split(",") if label}
            items = [
                item
                for item in self._by_state(repo, request)
                if wanted <= {label["name"] for label in item["labels"]}
            ]
            return self._listing(request, items, _issue_json)
        if rest == "/issues" and method == "POST":
            if not isinstance(body.get("title"), str) or not body["title"]:
                raise ApiError(422, 'Invalid request.\n\n"title" wasn\'t supplied.')
            return Answer(201, _issue_json(self._new_item(repo, body)))
        if (number := re.fullmatch(r"/issues/(\d+)", rest)) and method == "PATCH":
            item = self._item(repo, int(number[1]))
            if body.get("state") not in (None, "open", "closed"):
                raise ApiError(
                    422,
                    "Validation Failed",
                    errors=[{"resource": "Issue", "field": "state", "code": "invalid"}],
                )
            for key in ("title", "body", "state"):
                if key in body:
                    item[key] = body[key]
            if "labels" in body:
                item["labels"] = _labels(body["labels"])
            item["updated_at"] = self.now()
            return Answer(200, _issue_json(item))
        if rest == "/pulls" and method == "GET":
            pulls = [item for item in self._by_state(repo, request) if "head" in item]
            return self._listing(request, pulls, _pull_json)
        if rest == "/pulls" and method == "POST":
            head = str(body.get("head", "")).split(":")[-1]
            for field_name, branch in (("head", head), ("base", body.get("base"))):
                if branch not in repo["branches"]:
                    raise ApiError(
                        422,
                        "Validation Failed",
                        errors=[
                            {"resource": "PullRequest", "field": field_name, "code": "invalid"}
                        ],
                    )
            if head == body["base"]:
                raise ApiError(
                    422,
                    "Validation Failed",
                    errors=[
                        {
                            "resource": "PullRequest",
                            "code": "custom",
                            "message": f"No commits between {body['base']} and {head}",
                        }
                    ],
                )
            item = self._new_item(
                repo, body, head=head, base=body["base"], draft=bool(body.get("draft", False))
            )
            return Answer(201, _pull_json(item))
        raise ApiError(404, "Not Found")

    def _by_state(self, repo: dict[str, Any], request: RecordedRequest) -> list[dict[str, Any]]:
        state = request.query.get("state", "open")
        return [item for item in repo["items"] if state == "all" or item["state"] == state]

    def _item(self, repo: dict[str, Any], number: int) -> dict[str, Any]:
        if not 1 <= number <= len(repo["items"]):
            raise ApiError(404, "Not Found")
        item: dict[str, Any] = repo["items"][number - 1]
        return item

    def _new_item(self, repo: dict[str, Any], body: dict[str, Any], **pull: Any) -> dict[str, Any]:
        now = self.now()
        number = len(repo["items"]) + 1
        kind = "pull" if pull else "issues"
        item = {
            "id": 10_000 + number,
            "number": number,
            "title": body["title"],
            "body": body.get("body"),
            "state": "open",
            "html_url": f"{repo['html_url']}/{kind}/{number}",
            "user": {"login": self.user["login"], "id": self.user["id"]},
            "labels": _labels(body.get("labels") or []),
            "assignees": [{"login": login} for login in body.get("assignees") or []],
            "comments": 0,
            "created_at": now,
            "updated_at": now,
            "closed_at": None,
            "repo": repo["full_name"],
            **pull,
        }
        repo["items"].append(item)
        return item

    def _listing(
        self, request: RecordedRequest, items: list[dict[str, Any]], render: Any
    ) -> Answer:
        """One page of `items` with GitHub's Link header (absolute URLs, rel next/last)."""
        per_page = min(int(request.query.get("per_page", 30)), 100)
        page = int(request.query.get("page", 1))
        chunk, more = _page(items, per_page, page)
        last = max(1, -(-len(items) // per_page))
        rels = ([("next", page + 1), ("last", last)] if more else []) + (
            [("prev", page - 1), ("first", 1)] if page > 1 else []
        )
        url = f"{self.origin}{request.path}"
        links = [
            f'<{url}?{urlencode({**request.query, "page": number})}>; rel="{rel}"'
            for rel, number in rels
        ]
        headers = {"link": ", ".join(links)} if links else {}
        return Answer(200, [render(item) for item in chunk], headers)


def _labels(names: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": zlib.crc32(str(name).encode()),
            "name": str(name),
            "color": "ededed",
            "default": False,
        }
        for name in names
    ]


def _user(login: str) -> dict[str, Any]:
    return {"login": login, "type": "User"}


def _issue_json(item: dict[str, Any]) -> dict[str, Any]:
    issue = {
        key: value for key, value in item.items() if key not in ("head", "base", "draft", "repo")
    }
    issue["assignees"] = [_user(person["login"]) for person in item["assignees"]]
    issue["assignee"] = issue["assignees"][0] if issue["assignees"] else None
    if "head" in item:  # GitHub marks pull requests in the issues list this way
        issue["pull_request"] = {"html_url": item["html_url"], "merged_at": None}
    return issue


def _pull_json(item: dict[str, Any]) -> dict[str, Any]:
    owner = item["repo"].split("/")[0]
    pull = {
        key: value for key, value in item.items() if key not in ("head", "base", "repo", "comments")
    }
    pull["head"] = {"ref": item["head"], "label": f"{owner}:{item['head']}", "sha": "0" * 40}
    pull["base"] = {"ref": item["base"], "label": f"{owner}:{item['base']}", "sha": "1" * 40}
    pull["merged_at"] = None
    return pull


def _repo_json(repo: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in repo.items() if key not in ("branches", "items")}
