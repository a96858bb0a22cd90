"""Real redis-servers for the Redis security tests, started by the tests themselves.

`secure_redis`: a TLS port (and a plaintext one for the wrong-scheme test), `requirepass`, and
two ACL users: `alice` with every right and `reader` who may only read. `mtls_redis`: TLS that
requires a client certificate. Certificates come from a CA generated here with `cryptography`;
a second, unrelated CA plays the provider's CA we were not given.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from taskloom.config import Settings
from tests.servers import free_port, start_redis

DEFAULT_PASSWORD = "default-Pa55-word"
ALICE_PASSWORD = "alice-Pa55-word"
READER_PASSWORD = "reader-Pa55-word"


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


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


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".key").chmod(0o600)


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    name: str,
    *,
    server: bool,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("Taskloom Test CA")
    _write(root / "ca", ca_key, ca_cert)
    other_key, other_cert = _ca("Some Other CA")
    _write(root / "other-ca", other_key, other_cert)
    _write(root / "server", *_leaf(ca_key, ca_cert, "redis.test", server=True))
    _write(root / "client", *_leaf(ca_key, ca_cert, "taskloom-worker", server=False))
    return Pki(
        ca=root / "ca.crt",
        other_ca=root / "other-ca.crt",
        server_cert=root / "server.crt",
        server_key=root / "server.key",
        client_cert=root / "client.crt",
        client_key=root / "client.key",
    )


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
