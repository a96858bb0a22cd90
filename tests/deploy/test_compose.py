"""compose.yaml, checked without a Docker engine: valid against the Compose Specification's JSON
Schema (vendored in tests/schemas/), started in the right order, every secret required from the
`.env` file, and the environment it gives Taskloom accepted by production's own guard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from taskloom.config import Settings
from tests.servers import missing_program

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"
SECRETS = {
    "POSTGRES_PASSWORD",
    "DATABASE_APP_PASSWORD",
    "REDIS_PASSWORD",
    "JWT_SECRET",
    "CREDENTIAL_ENCRYPTION_KEYS",
    "METRICS_TOKEN",
    "GRAFANA_ADMIN_PASSWORD",
}
TASKLOOM_SERVICES = ("migrate", "api", "worker")
# Compose's interpolation: $$ is a literal $, ${VAR}, ${VAR:-default}, ${VAR:?message}, ...
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def _raw() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution over a loaded document (the parts this file uses)."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        current = env.get(name)
        if operator in {":?", "?"}:
            if current is None or (operator == ":?" and not current):
                raise KeyError(f"{name}: {argument}")
            return current
        if operator in {":-", "-"}:
            unset = current is None or (operator == ":-" and not current)
            return argument if unset else str(current)
        return current or ""

    return _VARIABLE.sub(substitute, value)


def _secrets() -> dict[str, str]:
    return {
        "POSTGRES_PASSWORD": "pg-" + "p" * 30,
        "DATABASE_APP_PASSWORD": "app-" + "a" * 30,
        "REDIS_PASSWORD": "redis-" + "r" * 30,
        "JWT_SECRET": "j" * 64,
        "CREDENTIAL_ENCRYPTION_KEYS": "k1:" + "A" * 43 + "=",
        "METRICS_TOKEN": "m" * 40,
        "GRAFANA_ADMIN_PASSWORD": "g" * 20,
    }


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service["environment"]
    assert isinstance(environment, dict), "environment as a mapping"
    return {str(k): str(v) for k, v in environment.items()}


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(_raw()), key=lambda e: list(e.path)
    )
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    interpolated = _interpolate(_raw(), _secrets())
    assert not list(jsonschema.Draft7Validator(schema).iter_errors(interpolated))


def test_the_stack_has_its_services_and_starts_after_the_migrate_job() -> None:
    services = _raw()["services"]
    assert services["postgres"]["image"] == "postgres:16"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert services["redis"]["image"] == "redis:7"
    redis_command = " ".join(services["redis"]["command"])
    assert "--requirepass" in redis_command
    assert "--appendonly yes" in redis_command
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert "migrate" not in migrate["depends_on"]
    for name in ("api", "worker"):
        service = services[name]
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["deploy"]["replicas"] == 2
        assert service["command"] == [name]
    assert services["worker"]["environment"]["WORKER_METRICS_PORT"] == "9100"
    prometheus_volumes = services["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus_volumes
    grafana_volumes = " ".join(services["grafana"]["volumes"])
    assert "./deploy/grafana/taskloom.json:" in grafana_volumes
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning" in grafana_volumes
    for mount in prometheus_volumes + services["grafana"]["volumes"]:
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), source


def test_every_secret_is_required_from_the_env_file() -> None:
    text = COMPOSE.read_text()
    used: dict[str, set[str]] = {}
    for match in _VARIABLE.finditer(text):
        if match.group(1):
            used.setdefault(match.group(1), set()).add(match.group(2) or "")
    assert set(used) >= SECRETS, "secrets compose.yaml never reads"
    for name in SECRETS:
        assert used[name] == {":?"}, f"{name} must always be ${{{name}:?…}}, not {used[name]}"
    # No secret-looking setting is a literal anywhere: each one comes from a required variable.
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|KEYS|AUTH")
    for name, service in _raw()["services"].items():
        for key, value in _environment(service).items() if "environment" in service else ():
            if secretish.search(key) and key != "DATABASE_URL":
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", value), f"{name}.{key}={value}"
    # Each missing secret alone stops `compose up`, with the variable's name.
    for name in SECRETS:
        env = {k: v for k, v in _secrets().items() if k != name}
        with pytest.raises(KeyError, match=name):
            _interpolate(_raw(), env)
        with pytest.raises(KeyError, match=name):
            _interpolate(_raw(), {**env, name: ""})
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert documented == SECRETS


def test_production_accepts_the_environment_compose_gives_taskloom() -> None:
    services = _interpolate(_raw(), _secrets())["services"]
    for name in TASKLOOM_SERVICES:
        environment = _environment(services[name])
        assert environment["TASKLOOM_ENV"] == "production"
        settings = Settings(_env_file=None, **{k.lower(): v for k, v in environment.items()})
        assert settings.is_production
        assert settings.production_problems() == []
        assert settings.redis_has_password
        assert settings.key_prefix == "production:"
        if name == "worker":
            grace = services[name]["stop_grace_period"]
            assert float(grace.removesuffix("s")) > settings.shutdown_timeout_seconds + 2


def test_prometheus_config_scrapes_api_and_workers_and_loads_the_alerts(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["taskloom"]["dns_sd_configs"][0]["names"] == ["api"]
    assert jobs["taskloom-worker"]["dns_sd_configs"][0]["port"] == 9100
    promtool = shutil.which("promtool")
    if promtool is None:
        missing_program("promtool is missing: apt-get install prometheus (Debian's package)")
    # promtool opens the token file and the rule files: give it both, as compose mounts them.
    token = tmp_path / "metrics_token"
    token.write_text("m" * 40)
    jobs["taskloom"]["authorization"]["credentials_file"] = str(token)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ROOT / "deploy/prometheus/alerts.yml", tmp_path / "alerts.yml")
    checked = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_grafana_provisioning_loads_the_dashboard_from_the_mounted_path() -> None:
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/taskloom.yml").read_text()
    )
    path = providers["providers"][0]["options"]["path"]
    grafana_volumes = _raw()["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/taskloom.json:{path}/taskloom.json:ro" in grafana_volumes
