"""Real redis-servers for the Redis security tests, started by the tests themselves.

`secure_redis`: a TLS port (and a plaintext one for the wrong-scheme test), `requirepass`, and
two ACL users: `alice` with every right and `reader` who may only read. `mtls_redis`: TLS that
requires a client certificate. Certificates come from a CA generated here with `cryptography`;
a second, unrelated CA plays the provider's CA we were not given.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from taskloom.config import Settings
from tests.pki import Pki, make_pki
from tests.servers import free_port, start_redis

DEFAULT_PASSWORD = "default-Pa55-word"
ALICE_PASSWORD = "alice-Pa55-word"
READER_PASSWORD = "reader-Pa55-word"


@dataclass(frozen=True)
class RedisServer:
    port: int  # TLS
    pki: Pki
    plain_port: int | None = None  # plaintext, for "TLS client to a plaintext port"

    def url(self, scheme: str = "rediss", auth: str = "", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{auth}{host}:{self.port}/0"

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "taskloom_env": "test",
            "redis_url": self.url(),
            "redis_tls_ca_file": self.pki.ca,
            "redis_password": DEFAULT_PASSWORD,
            "redis_connect_timeout_seconds": 2.0,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_config(directory: Path, pki: Pki, port: int, *, client_certs: bool) -> list[str]:
    return [
        "port 0",
        f"tls-port {port}",
        "bind 127.0.0.1 127.0.0.2",  # 127.0.0.2 is not in the certificate
        f"tls-cert-file {pki.server_cert}",
        f"tls-key-file {pki.server_key}",
        f"tls-ca-cert-file {pki.ca}",
        f"tls-auth-clients {'yes' if client_certs else 'no'}",
        'save ""',
        "appendonly no",
        f"dir {directory}",
        f"logfile {directory / 'redis.log'}",
    ]


@pytest.fixture(scope="session")
def secure_redis(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    directory = tmp_path_factory.mktemp("redis-tls")
    port, plain_port = free_port(), free_port()
    config = [
        *_tls_config(directory, pki, port, client_certs=False),
        f"port {plain_port}",
        f"requirepass {DEFAULT_PASSWORD}",
        f"user alice on >{ALICE_PASSWORD} ~* &* +@all",
        f"user reader on >{READER_PASSWORD} ~* resetchannels -@all +@read +@connection +info",
    ]
    process = start_redis(directory, config, port)
    yield RedisServer(port=port, pki=pki, plain_port=plain_port)
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def mtls_redis(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    directory = tmp_path_factory.mktemp("redis-mtls")
    port = free_port()
    config = [
        *_tls_config(directory, pki, port, client_certs=True),
        f"requirepass {DEFAULT_PASSWORD}",
    ]
    process = start_redis(directory, config, port)
    yield RedisServer(port=port, pki=pki)
    process.terminate()
    process.wait(timeout=10)
