"""Typer commands. Wiring only: each command builds settings, starts what it needs, calls
services, and stops everything on exit (Ctrl-C and SIGTERM included)."""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import structlog
import typer
import uvicorn
from rich.console import Console
from rich.panel import Panel

import taskloom.models  # noqa: F401  (every model mapped, whichever command runs)
from taskloom import __version__
from taskloom.audit.service import AuditContext
from taskloom.config import Settings, get_settings
from taskloom.embedded import start_embedded

if TYPE_CHECKING:
    import uuid

    from taskloom.queue.shutdown import ExitBudget
    from taskloom.runtime import Runtime

app = typer.Typer(help="Taskloom: multi-tenant AI workflow automation.", no_args_is_help=True)
user_app = typer.Typer(help="Manage user accounts.", no_args_is_help=True)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"taskloom {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Taskloom: multi-tenant AI workflow automation."""


app.add_typer(user_app, name="user")
keys_app = typer.Typer(help="Credential encryption keys (CREDENTIAL_ENCRYPTION_KEYS).")
app.add_typer(keys_app, name="keys")
gdpr_app = typer.Typer(help="Data-protection requests, handled for a person (docs/GDPR.md).")
app.add_typer(gdpr_app, name="gdpr")
console = Console(stderr=True)

DEMO_EMAIL = "admin@taskloom.local"
CLI_CONTEXT = AuditContext(user_agent="taskloom-cli")


@asynccontextmanager
async def _services(settings: Settings) -> AsyncIterator[Settings]:
    """Start the embedded PostgreSQL / Redis for whichever URL is unset; stop them on exit."""
    from taskloom.observability import sentry
    from taskloom.observability.logging import configure_logging

    configure_logging(settings)
    sentry.configure(settings, service="taskloom")
    if settings.database_url and settings.redis_configured:
        yield settings
        return
    # Called on the main thread on purpose: start_embedded turns SIGTERM/SIGHUP into SystemExit
    # until the API installs its own handlers, so a signal during migrations still stops them.
    services = start_embedded(settings)
    try:
        yield services.settings
    finally:
        services.stop()


def _announce(settings: Settings, event: str, text: str | None, **fields: Any) -> None:
    """A service's start-up message: a log line when logs are JSON (every line on stderr is
    then JSON), else readable text on the console."""
    if settings.uses_json_logs:
        structlog.get_logger("taskloom.cli").info(event, **fields)
    elif text is not None:
        console.print(text)


async def _serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    bootstrap: bool,
    with_worker: bool,
    listen_fd: int | None = None,
) -> None:
    from taskloom.app import create_app
    from taskloom.auth.accounts import create_account, instance_has_users
    from taskloom.db.migrate import migrate
    from taskloom.jobs import worker_service
    from taskloom.observability import tracing
    from taskloom.runtime import open_runtime

    async with _services(settings) as live:
        tracing.configure(live, service="taskloom" if with_worker else "taskloom-api")
        if bootstrap:
            # The quick start only. `taskloom api`/`worker` never migrate: in production a
            # `taskloom migrate` job runs before the new release's processes (docs/OPERATIONS.md).
            await migrate(live)
        runtime = await open_runtime(live)
        worker = worker_service(runtime) if with_worker else None
        try:
            if bootstrap and not await instance_has_users(runtime=runtime):
                password = secrets.token_urlsafe(15)
                await create_account(
                    runtime=runtime,
                    email=DEMO_EMAIL,
                    password=password,
                    display_name="Taskloom Admin",
                    org_name="Demo",
                    is_superuser=True,
                    context=CLI_CONTEXT,
                )
                # The password goes to the terminal, never into the log stream.
                (Console() if live.uses_json_logs else console).print(
                    Panel.fit(
                        f"Demo organization created.\n  email:    {DEMO_EMAIL}\n"
                        f"  password: {password}\n"
                        "(shown once; change it after signing in, at /ui/password)",
                        title="Taskloom",
                    )
                )
                _announce(live, "demo_organization_created", None, email=DEMO_EMAIL)
            config = uvicorn.Config(
                create_app(runtime=runtime),
                host=host,
                port=port,
                proxy_headers=True,
                forwarded_allow_ips=live.forwarded_allow_ips,
                log_config=None,
                access_log=False,
            )
            _announce(
                live,
                "api_listening",
                f"Taskloom API on http://{host}:{port}  (Ctrl-C to stop)",
                url=f"http://{host}:{port}",
            )
            server = _Server(config)
            loop = asyncio.get_running_loop()

            def stop(sig: int) -> None:
                runtime.stopping.set()  # open event streams end, so uvicorn's wait is short
                server.handle_exit(sig, None)

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop, sig)
            if worker is not None:
                await worker.start()
            # Under `api --workers N` the supervisor has bound the socket (api_processes.py).
            inherited = None if listen_fd is None else [socket.socket(fileno=listen_fd)]
            await server.serve(sockets=inherited)
        finally:
            if worker is not None:
                await worker.shutdown()
            await runtime.close()
            tracing.shutdown()


def _run_service(main: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived service (API, worker) on uvloop, which uvicorn would pick by itself if
    it owned the loop; here the CLI does, to stop the embedded servers after uvicorn."""
    try:
        import uvloop
    except ImportError:  # not built for this platform: the standard loop works, slower
        asyncio.run(main)
        return
    uvloop.run(main)


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after serving, which would kill the process before the
    embedded servers are stopped. The CLI installs its own handlers instead (see `_serve`)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


HostOption = Annotated[str | None, typer.Option(help="Interface to bind (default API_HOST).")]
PortOption = Annotated[int | None, typer.Option(help="Port to listen on (default API_PORT).")]


@app.command()
def up(host: HostOption = None, port: PortOption = None) -> None:
    """Everything in one process: embedded PostgreSQL + Redis when no URLs are set, migrations,
    a demo organization on first start, and the API."""
    settings = get_settings()
    _run_service(
        _serve(
            settings,
            host=host or settings.api_host,
            port=port or settings.api_port,
            bootstrap=True,
            with_worker=True,
        )
    )


WorkersOption = Annotated[
    int,
    typer.Option(
        min=1,
        max=64,
        help="API processes on one port, their /metrics shared (PROMETHEUS_MULTIPROC_DIR, "
        "else a directory of this run's own).",
    ),
]
# Set by `api --workers N` on the processes it starts: the listening socket they inherit.
ListenFdOption = Annotated[int | None, typer.Option(hidden=True)]


@app.command()
def api(
    host: HostOption = None,
    port: PortOption = None,
    workers: WorkersOption = 1,
    listen_fd: ListenFdOption = None,
) -> None:
    """Serve the API. It does not migrate: run `taskloom migrate` first (docs/OPERATIONS.md)."""
    settings = get_settings()
    host, port = host or settings.api_host, port or settings.api_port
    if workers > 1:
        if not (settings.database_url and settings.redis_configured):
            console.print(
                "[red]--workers needs DATABASE_URL and REDIS_URL:[/red] the embedded servers "
                "belong to one process"
            )
            raise typer.Exit(2)
        from taskloom.api_processes import serve_processes
        from taskloom.observability.logging import configure_logging

        configure_logging(settings)
        raise typer.Exit(serve_processes(settings=settings, host=host, port=port, workers=workers))
    _run_service(
        _serve(
            settings, host=host, port=port, bootstrap=False, with_worker=False, listen_fd=listen_fd
        )
    )


@app.command()
def worker() -> None:
    """Run executions from the queue until SIGTERM/SIGINT; then stop taking jobs, let running
    ones finish for up to SHUTDOWN_TIMEOUT_SECONDS, hand the rest back, and exit 0 within
    SHUTDOWN_TIMEOUT_SECONDS + 2 s. It does not migrate: run `taskloom migrate` first."""
    from taskloom.queue.shutdown import ExitBudget

    budget = ExitBudget()  # SHUTDOWN_TIMEOUT_SECONDS + 2 s from the signal to the exit
    _run_service(_work(get_settings(), budget))
    if budget.started:
        budget.exit_now()


async def _work(settings: Settings, budget: ExitBudget) -> None:
    from taskloom.jobs import worker_service
    from taskloom.observability import tracing
    from taskloom.runtime import open_runtime

    async with _services(settings) as live:
        tracing.configure(live, service="taskloom-worker")
        runtime = await open_runtime(live)
        service = worker_service(runtime)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if live.worker_metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(live.worker_metrics_port, addr=live.api_host)
        try:
            await service.start()
            _announce(
                live,
                "worker_running",
                f"worker {service.id} running (Ctrl-C to stop)",
                worker_id=service.id,
            )
            await stop.wait()
            # No watchdog with embedded servers (a development setup): stopping them takes
            # longer than the budget, and cutting that short would leave them running.
            embedded = not (settings.database_url and settings.redis_configured)
            budget.start(live.shutdown_timeout_seconds, watchdog=not embedded)
            await service.shutdown()
        finally:
            await budget.bounded(runtime.close())
            tracing.shutdown(timeout_s=budget.seconds_left())


@app.command()
def migrate() -> None:
    """Apply database migrations and (re)create the application role and its grants, under an
    advisory lock (concurrent runs take turns). Run it as a one-off job before a new release's
    api and worker processes (docs/OPERATIONS.md)."""
    from taskloom.db.migrate import migrate as run_migrations

    async def _run() -> None:
        async with _services(get_settings()) as live:
            await run_migrations(live)

    asyncio.run(_run())
    console.print("database is at the latest revision; application role and grants are in place")


@user_app.command("create")
def user_create(
    email: Annotated[str, typer.Option(help="Email address (the sign-in name).")],
    name: Annotated[str, typer.Option(help="Display name.")],
    org: Annotated[str | None, typer.Option(help="Create an organization they own.")] = None,
    superuser: Annotated[bool, typer.Option(help="Instance administrator.")] = False,
    password: Annotated[
        str | None,
        typer.Option(help="Password (prompted when omitted; avoid putting it in shell history)."),
    ] = None,
) -> None:
    """Create a user account."""
    from taskloom.auth.accounts import create_account
    from taskloom.auth.schemas import RegisterRequest
    from taskloom.runtime import open_runtime

    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        valid = RegisterRequest(email=email, password=password, display_name=name)
    except ValueError as exc:
        console.print(f"[red]invalid input:[/red] {exc}")
        raise typer.Exit(2) from exc

    async def _run() -> None:
        async with _services(get_settings()) as live:
            runtime = await open_runtime(live)
            try:
                created = await create_account(
                    runtime=runtime,
                    email=valid.email,
                    password=valid.password,
                    display_name=valid.display_name,
                    org_name=org,
                    is_superuser=superuser,
                    context=CLI_CONTEXT,
                )
            finally:
                await runtime.close()
        console.print(f"created user {created.email} ({created.user_id})")
        if created.org_id:
            console.print(f"owner of organization {created.org_name} ({created.org_id})")

    from taskloom.errors import DomainError

    try:
        asyncio.run(_run())
    except DomainError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from exc


@user_app.command("set-password")
def user_set_password(
    email: Annotated[str, typer.Option(help="Email address of the account.")],
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read the new password from the first line of standard input (automation).",
        ),
    ] = False,
) -> None:
    """Set someone's password (e.g. a forgotten one) and sign them out everywhere."""
    from taskloom.auth.password_changes import set_password
    from taskloom.errors import DomainError
    from taskloom.runtime import open_runtime

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)

    async def _run() -> int:
        async with _services(get_settings()) as live:
            runtime = await open_runtime(live)
            try:
                return await set_password(
                    runtime=runtime, email=email, new_password=password, context=CLI_CONTEXT
                )
            finally:
                await runtime.close()

    try:
        revoked = asyncio.run(_run())
    except DomainError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"password of {email.strip()} changed; {revoked} session(s) signed out")


@app.command()
def purge(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be deleted, per table.")
    ] = False,
) -> None:
    """Delete finished executions older than EXECUTION_RETENTION_DAYS now, with their steps and
    webhook deliveries (their ai_usage rows are summed per day first), and workflow versions
    beyond each workflow's newest WORKFLOW_VERSIONS_KEPT. The workers' housekeeping does the
    same a few batches at a time."""
    from taskloom.executions.retention import purge_expired_executions, retention_cutoff
    from taskloom.runtime import open_runtime
    from taskloom.workflows.retention import purge_old_versions

    async def _run() -> tuple[str, dict[str, int], int, int]:
        async with _services(get_settings()) as live:
            runtime = await open_runtime(live)
            try:
                cutoff = retention_cutoff(runtime).isoformat(timespec="seconds")
                report = await purge_expired_executions(runtime, dry_run=dry_run)
                versions = await purge_old_versions(runtime, dry_run=dry_run)
                return cutoff, report.counts(), live.workflow_versions_kept, versions
            finally:
                await runtime.close()

    cutoff, counts, kept, versions = asyncio.run(_run())
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"executions finished before {cutoff}: {verb}")
    for table, count in counts.items():
        if dry_run and table == "ai_usage_daily":
            continue  # nothing is written in a dry run
        label = "written or added to" if table == "ai_usage_daily" else ""
        typer.echo(f"  {table:<20} {count}{(' (' + label + ')') if label else ''}")
    typer.echo(f"workflow versions beyond the newest {kept} of each workflow: {verb} {versions}")


@app.command()
def doctor(
    strict: Annotated[
        bool, typer.Option(help="Judge by production rules whatever TASKLOOM_ENV says.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check the live configuration against Taskloom's security requirements (Redis TLS,
    verification, auth and prefix; secrets; database role and row-level security). Exits 1
    when a check fails."""
    from taskloom.config import Settings, production_guard_disabled
    from taskloom.doctor import failed, render_json, render_text, run_checks
    from taskloom.observability.logging import configure_logging

    with production_guard_disabled():  # report every problem instead of refusing at the first
        settings = Settings()
    configure_logging(settings)  # log lines go to stderr; stdout holds only the report
    checks = asyncio.run(run_checks(settings, strict=strict))
    typer.echo(render_json(checks) if json_output else render_text(checks, settings, strict=strict))
    raise typer.Exit(1 if failed(checks) else 0)


PersonTask = Callable[["Runtime", "uuid.UUID"], Awaitable[int]]


def _for_person(email: str, task: PersonTask) -> None:
    """Open the runtime, find the account by email, run `task`; exit with its status."""
    from taskloom.gdpr import service
    from taskloom.runtime import open_runtime

    async def _run() -> int:
        async with _services(get_settings()) as live:
            runtime = await open_runtime(live)
            try:
                user_id = await service.user_id_for(runtime, email)
                if user_id is None:
                    console.print(f"no account with the email {email}")
                    return 1
                return await task(runtime, user_id)
            finally:
                await runtime.close()

    raise typer.Exit(asyncio.run(_run()))


@gdpr_app.command("export")
def gdpr_export(
    email: Annotated[str, typer.Option(help="The person's email address.")],
    out: Annotated[Path, typer.Option(help="File to write: .zip (default) or .json.")],
) -> None:
    """Write everything Taskloom holds about a person to a file (GDPR Art. 15/20)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from taskloom.gdpr import export, service

    fmt = "json" if out.suffix.lower() == ".json" else "zip"

    async def task(runtime: Runtime, user_id: uuid.UUID) -> int:
        total = await export.count_rows(runtime.database, user_id)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("exporting rows", total=total)
            _, chunks = await service.start_export(
                runtime,
                user_id=user_id,
                context=CLI_CONTEXT,
                fmt=fmt,
                on_row=lambda rows: progress.advance(bar, rows),
            )
            with out.open("wb") as handle:
                async for chunk in chunks:
                    handle.write(chunk)
        out.chmod(0o600)  # personal data: readable by the operator only
        console.print(f"wrote {total} rows to {out}")
        return 0

    _for_person(email, task)


@gdpr_app.command("delete")
def gdpr_delete(
    email: Annotated[str, typer.Option(help="The person's email address.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Erase a person's account and personal data (GDPR Art. 17); see docs/GDPR.md."""
    from taskloom.errors import Conflict
    from taskloom.gdpr import service

    if not yes and not typer.confirm(f"Erase the account {email} and its personal data?"):
        raise typer.Exit(1)

    async def task(runtime: Runtime, user_id: uuid.UUID) -> int:
        try:
            result = await service.erase_account(runtime, user_id=user_id, context=CLI_CONTEXT)
        except Conflict as exc:
            console.print(f"[red]{exc.message}[/red]")
            for org in (exc.details or {}).get("organizations", []):
                members = org["other_members"]
                console.print(f"  {org['name']} ({org['org_id']}): {members} other members")
            return 1
        console.print(f"erased; the audit trail now says {result.pseudonym}")
        for table, count in sorted(result.counts.items()):
            console.print(f"  {table}: {count}")
        return 0

    _for_person(email, task)


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Re-encrypt every stored credential under the first key of CREDENTIAL_ENCRYPTION_KEYS."""
    from taskloom.crypto import CredentialCipher
    from taskloom.db.engine import create_database
    from taskloom.tools.keys import rotate_keys

    async def _run() -> int:
        async with _services(get_settings()) as live:
            database = create_database(live)
            try:
                report = await rotate_keys(
                    database, CredentialCipher.from_settings(live), context=CLI_CONTEXT
                )
            finally:
                await database.dispose()
        console.print(
            f"current key {report.current_key_id!r}: {report.rotated} re-encrypted, "
            f"{report.already_current} already current"
        )
        for connection_id, reason in report.failed:
            console.print(f"[red]connection {connection_id}: {reason}[/red]")
        return 1 if report.failed else 0

    raise typer.Exit(asyncio.run(_run()))


workflows_app = typer.Typer(
    help="Workflows as code: validate, pull, push and run workflow files "
    "(docs/WORKFLOWS-AS-CODE.md).",
    no_args_is_help=True,
)
app.add_typer(workflows_app, name="workflows")
UrlOption = Annotated[
    str | None, typer.Option("--url", envvar="TASKLOOM_URL", help="The server.", show_default=False)
]
KeyOption = Annotated[
    str | None,
    typer.Option(envvar="TASKLOOM_API_KEY", help="An API key (env only).", hidden=True),
]


@contextmanager
def _remote(url: str | None, api_key: str | None) -> Iterator[Any]:
    """The server's client; a refusal ends the command with its message (exit 1), a missing
    setting with exit 2."""
    from taskloom.workflows.remote import Remote, RemoteError, UsageError

    try:
        with Remote.connect(url, api_key) as remote:
            yield remote
    except UsageError as wrong:
        typer.echo(f"error: {wrong}", err=True)
        raise typer.Exit(2) from None
    except RemoteError as refused:
        typer.echo(f"error: {refused}", err=True)
        raise typer.Exit(1) from None


@workflows_app.command("validate")
def workflows_validate(
    paths: Annotated[list[Path], typer.Argument(help="Files, or directories of them.")],
) -> None:
    """Check workflow files offline with the API's validation; exit 1 on any problem
    (`file:field.path: message` lines)."""
    from taskloom.workflows.files import load_all

    found, problems = load_all(paths)
    for problem in problems:
        typer.echo(str(problem), err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{len(found)} workflow file(s) valid")


@workflows_app.command("init")
def workflows_init(
    directory: Path,
    template: Annotated[str, typer.Option("--template", help="A template's name.")],
    url: UrlOption = None,
) -> None:
    """Copy a template into DIRECTORY as `<name>.yaml` (never over an existing file); its
    schema line points at the server of TASKLOOM_URL when set."""
    from taskloom.workflows import templates

    try:
        written = templates.copy(template, directory, server=url)
    except templates.UnknownTemplate:
        typer.echo(f"error: no template is named {template!r}; the templates:", err=True)
        for name, known in templates.available().items():
            typer.echo(f"  {name}: {known.workflow.description}", err=True)
        raise typer.Exit(2) from None
    except FileExistsError:
        typer.echo(f"error: {directory / (template + '.yaml')} exists; not overwritten", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {written}; read its first lines for what it needs, then push it")


@workflows_app.command("pull")
def workflows_pull(directory: Path, url: UrlOption = None, api_key: KeyOption = None) -> None:
    """Write the organization's workflows to DIRECTORY (`<key>.yaml`, and the state file)."""
    from taskloom.workflows import sync

    with _remote(url, api_key) as remote:
        count = sync.pull(remote, directory, typer.echo)
    typer.echo(f"{count} workflow(s) pulled into {directory}")


@workflows_app.command("push")
def workflows_push(
    directory: Path,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete server workflows with no file here.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite workflows changed since the last pull.")
    ] = False,
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="Kept with each version stored.")
    ] = None,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Print the plan (create / update with a diff / delete with --prune), then apply it."""
    from taskloom.workflows import sync
    from taskloom.workflows.files import load_all

    found, problems = load_all([directory])
    for problem in problems:
        typer.echo(str(problem), err=True)
    if problems:
        raise typer.Exit(1)
    with _remote(url, api_key) as remote:
        state = sync.read_state(directory)
        server = sync.server_workflows(remote, state)
        plan = sync.make_plan(
            {key: workflow for key, (_, workflow) in found.items()},
            server,
            state,
            prune=prune,
            force=force,
        )
        sync.show(plan, typer.echo)
        if plan.conflicts:
            for conflict in plan.conflicts:
                typer.echo(f"error: {conflict}", err=True)
            raise typer.Exit(1)
        if dry_run:
            return
        try:
            sync.apply(
                remote,
                plan,
                state,
                message=message,
                say=typer.echo,
                show_secret=sys.stdout.isatty(),
            )
        finally:  # what was done is recorded, whether or not all of it was
            sync.write_state(directory, remote.url, state)


@workflows_app.command("run")
def workflows_run(
    name: Annotated[str, typer.Argument(help="The workflow's key, or its (unique) name.")],
    input_file: Annotated[
        Path | None, typer.Option("--input", help="The input: a JSON or YAML file.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the execution; exit 0 only on succeeded.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 600,
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Start the workflow; with --wait, print each step's status as it changes."""
    from taskloom.workflows import remote_run
    from taskloom.workflows.files import parse
    from taskloom.workflows.remote import UsageError

    data: Any = {}
    if input_file is not None:
        try:
            data = parse(input_file.read_text(encoding="utf-8"), input_file)
        except (OSError, ValueError) as unreadable:
            typer.echo(f"error: {input_file}: cannot be read: {unreadable}", err=True)
            raise typer.Exit(2) from None
        if not isinstance(data, dict):
            typer.echo(f"error: {input_file}: the input must be an object", err=True)
            raise typer.Exit(2)
    with _remote(url, api_key) as remote:
        try:
            code = remote_run.run(remote, name, data, wait=wait, say=typer.echo, timeout=timeout)
        except UsageError as wrong:
            typer.echo(f"error: {wrong}", err=True)
            raise typer.Exit(2) from None
    raise typer.Exit(code)


def main() -> None:
    """The `taskloom` entry point: configuration and connection problems end the process with
    one readable sentence and exit status 1 instead of a traceback."""
    from pydantic import ValidationError

    from taskloom.config import InsecureConfiguration
    from taskloom.db.engine import UnsafeDatabaseRoles
    from taskloom.embedded import EmbeddedNotInstalled
    from taskloom.observability import sentry
    from taskloom.redis import RedisConnectError

    try:
        app()
    except (RedisConnectError, UnsafeDatabaseRoles) as exc:
        sentry.capture(exc)  # a start-up that failed (configuration errors are not sent)
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except (InsecureConfiguration, EmbeddedNotInstalled) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except ValidationError as exc:
        typer.echo(f"error: invalid configuration: {exc}", err=True)
        raise SystemExit(2) from None
    finally:
        sentry.flush()


if __name__ == "__main__":
    main()
