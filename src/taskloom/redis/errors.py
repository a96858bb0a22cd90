"""What a failure to reach Redis means, in one sentence naming the target and what to check."""

from __future__ import annotations

import errno
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskloom.config import Settings, redact_url

# --- connecting and explaining failures --------------------------------------------------------


class RedisConnectError(RuntimeError):
    """Redis could not be used. `cause` is one of: refused, unreachable, timeout, tls_verify,
    tls_client_cert, tls_handshake, closed, auth, noauth, noperm, error. The message names the
    target (without its password) and what to check."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


def describe_target(settings: Settings) -> str:
    """REDIS_URL without any password, or the Sentinel master's name and the Sentinels, for
    logs and messages."""
    if settings.redis_sentinels:
        sentinels = ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            for host, port in settings.redis_sentinel_addresses
        )
        scheme = "TLS, " if settings.redis_sentinel_tls else ""
        return f"master {settings.redis_sentinel_master!r} ({scheme}Sentinels {sentinels})"
    if settings.redis_cluster and settings.redis_cluster_nodes:
        return f"cluster {redact_url(settings.redis_url)} (and {settings.redis_cluster_nodes})"
    if settings.redis_cluster:
        return f"cluster {redact_url(settings.redis_url)}"
    return redact_url(settings.redis_url)


def explain_error(exc: BaseException, settings: Settings) -> RedisConnectError:
    """Turn a redis-py / OS / TLS error into one sentence naming the cause."""
    target = describe_target(settings)
    chain = _chain(exc)
    text = " | ".join(str(e) for e in chain)
    codes = {getattr(e, "status_code", None) for e in chain}  # redis-py keeps NOAUTH etc. here
    user = settings.redis_username or urlsplit(settings.redis_url or "").username or "default"

    def err(cause: str, what: str) -> RedisConnectError:
        return RedisConnectError(cause, f"Redis at {target}: {what}")

    if any(isinstance(e, MasterNotFoundError) for e in chain):
        return _explain_no_master(text, settings, err)
    if "cluster support disabled" in text or "Cluster mode is not enabled" in text:
        return err(
            "not_a_cluster",
            "this server is not a Redis Cluster node (cluster-enabled no). Set "
            "REDIS_CLUSTER=false for one server, or name a node of the Cluster in REDIS_URL.",
        )
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain) or (
        "CERTIFICATE_VERIFY_FAILED" in text
    ):
        reason = next(
            (e.verify_message for e in chain if isinstance(e, ssl.SSLCertVerificationError)),
            "certificate verify failed",
        )
        return err(
            "tls_verify",
            f"TLS certificate verification failed ({reason}). Set REDIS_TLS_CA_FILE to the CA "
            "that signed the server's certificate, and connect with a host name the "
            "certificate lists.",
        )
    if isinstance(exc, NoPermissionError) or "NOPERM" in codes:
        return err(
            "noperm",
            f"the ACL user {user!r} lacks a permission Taskloom needs ({_first_line(exc)}). "
            "Grant it with ACL SETUSER (docs/REDIS.md lists what Taskloom needs).",
        )
    if "NOAUTH" in codes:
        return err(
            "noauth",
            "the server requires a password (NOAUTH) and none was sent. Set REDIS_PASSWORD "
            "or put the password in REDIS_URL.",
        )
    if "without any password configured" in text or "no password is set" in text:
        return err(
            "auth",
            "a password was sent but the server has none configured for this user. Remove "
            "REDIS_PASSWORD (and any password in REDIS_URL), or configure one on the server.",
        )
    if isinstance(exc, AuthenticationError) or "WRONGPASS" in codes:
        return err(
            "auth",
            f"authentication failed for user {user!r}: wrong password, or the ACL user is "
            "unknown or disabled. Check REDIS_PASSWORD / REDIS_USERNAME.",
        )
    if "CERTIFICATE_REQUIRED" in text:
        return err(
            "tls_client_cert",
            "the server requires a client certificate (mutual TLS). Set REDIS_TLS_CERT_FILE "
            "and REDIS_TLS_KEY_FILE to a certificate its CA trusts.",
        )
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return err(
            "tls_handshake",
            "the server did not answer in TLS: this port is plaintext. Use redis:// for it, "
            "or the server's TLS port with rediss://.",
        )
    if any(isinstance(e, ssl.SSLError) for e in chain) or "SSL" in text:
        return err(
            "tls_handshake",
            f"the TLS handshake failed ({_first_line(exc)}). Is this port TLS? A plaintext "
            "server needs redis://; a server requiring client certificates needs "
            "REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE.",
        )
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "refused" in text.lower():
        return err("refused", "connection refused. Is Redis running and listening there?")
    if any(isinstance(e, OSError) and e.errno in _UNREACHABLE for e in chain) or (
        "Name or service not known" in text
    ):
        return err("unreachable", f"host unreachable or unknown ({_first_line(exc)}).")
    if any(isinstance(e, (TimeoutError, RedisTimeoutError)) for e in chain) or (
        "timed out" in text.lower() or "Timeout" in text
    ):
        return err(
            "timeout",
            f"no answer within {settings.redis_connect_timeout_seconds:g} s: a firewall, a "
            "wrong host or port, or a TLS mismatch (rediss:// to a plaintext port, or redis:// "
            "to a TLS port).",
        )
    if "closed by server" in text or "reset by peer" in text or "Connection lost" in text:
        return err(
            "closed",
            "the server closed the connection. A TLS port spoken to with redis:// does this "
            "(use rediss://), as does a server that requires client certificates "
            "(REDIS_TLS_CERT_FILE / REDIS_TLS_KEY_FILE) or one at its client limit.",
        )
    return err("error", _first_line(exc))


def _explain_no_master(
    text: str, settings: Settings, err: Callable[[str, str], RedisConnectError]
) -> RedisConnectError:
    """The Sentinels named no master: none answered, one refused our credentials, or those
    that answered know no healthy master by that name. (redis-py's message lists each failed
    Sentinel as `<redis.asyncio.client.Redis(…)> - <error>`; one that answered leaves none.)"""
    failed = text.count("client.Redis(")
    if "AuthenticationError" in text or "NOAUTH" in text or "WRONGPASS" in text:
        return err(
            "sentinel_auth",
            "a Sentinel refused the credentials: Sentinels that require a password (their "
            "`requirepass`, or an ACL user) need REDIS_SENTINEL_PASSWORD (and "
            "REDIS_SENTINEL_USERNAME); REDIS_PASSWORD is the data nodes'.",
        )
    if failed >= len(settings.redis_sentinel_addresses):
        return err(
            "sentinels_unreachable",
            "no Sentinel answered (connection refused or timed out on each). Check "
            "REDIS_SENTINELS (host:port of each Sentinel, usually port 26379) and "
            "REDIS_SENTINEL_TLS.",
        )
    return err(
        "no_master",
        f"the Sentinels know no healthy master named {settings.redis_sentinel_master!r}. "
        "Check REDIS_SENTINEL_MASTER against `SENTINEL MASTERS` on a Sentinel; during a "
        "failover this lasts until a replica is promoted.",
    )


_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENOENT, errno.EADDRNOTAVAIL}


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
