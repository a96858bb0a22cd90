"""HTTP metrics: exact counts by route template, bounded label values, real histograms, and SLI
gauges over a sliding window."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import secrets
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from taskloom.app import create_app
from taskloom.observability.metrics import UNMATCHED_PATH, RequestWindow
from taskloom.runtime import Runtime
from tests.factories import register
from tests.servers import missing_program


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_requests_are_counted_once_under_their_route_template(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client, label="metrics", organization_name="Metrics Org")
    template = "/api/workflows/{workflow_id}"
    before_ok = _value("http_requests_total", method="GET", path="/api/workflows", status="200")
    before_404 = _value("http_requests_total", method="GET", path=template, status="404")
    before_count = _value("http_request_duration_seconds_count", method="GET", path=template)

    for _ in range(3):
        assert (await client.get("/api/workflows", headers=owner.headers)).status_code == 200
    for _ in range(2):
        missing = await client.get(f"/api/workflows/{uuid.uuid4()}", headers=owner.headers)
        assert missing.status_code == 404

    after_ok = _value("http_requests_total", method="GET", path="/api/workflows", status="200")
    after_404 = _value("http_requests_total", method="GET", path=template, status="404")
    assert after_ok - before_ok == 3
    assert after_404 - before_404 == 2
    assert (
        _value("http_request_duration_seconds_count", method="GET", path=template) - (before_count)
        == 2
    )
    assert _value("http_request_duration_seconds_sum", method="GET", path=template) > 0
    assert (
        _value("http_request_duration_seconds_bucket", method="GET", path=template, le="+Inf")
        >= after_404
    )


async def test_random_urls_and_ids_create_few_path_values(client: httpx.AsyncClient) -> None:
    def paths() -> set[str]:
        return {
            sample.labels["path"]
            for family in REGISTRY.collect()
            if family.name == "http_requests"
            for sample in family.samples
        }

    def methods() -> set[str]:
        return {
            sample.labels["method"]
            for family in REGISTRY.collect()
            if family.name == "http_requests"
            for sample in family.samples
        }

    before = paths()
    for _ in range(500):
        await client.get(f"/nothing/here/{secrets.token_hex(8)}?q={secrets.token_hex(4)}")
        await client.get(f"/api/executions/{uuid.uuid4()}")
    for _ in range(20):  # client-chosen methods must not grow the series either
        await client.request(f"X{secrets.token_hex(3).upper()}", "/api/workflows")
    added = paths() - before
    assert added <= {UNMATCHED_PATH, "/api/executions/{execution_id}"}
    assert not any("?" in p for p in paths())
    assert methods() <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"}


def test_sli_gauges_follow_a_controlled_traffic_mix_and_forget_old_traffic() -> None:
    window = RequestWindow(window_seconds=60, availability_target=0.99, latency_target_seconds=0.5)
    # 100 requests at t=1000: 1..100 ms, of which 4 are 5xx; and 10 slow ones (1 s) at t=1010.
    for i in range(1, 101):
        window.observe(i / 1000, server_error=i % 25 == 0, now=1000.0)
    for _ in range(10):
        window.observe(1.0, server_error=False, now=1010.0)

    def gauges(now: float) -> dict[str, float]:
        values = {}
        for family in window.collect(now=now):
            for sample in family.samples:
                key = sample.name + "".join(f"[{v}]" for v in sample.labels.values())
                values[key] = sample.value
        return values

    now = gauges(1030.0)
    assert now["http_error_rate"] == 4 / 110
    assert now["http_latency_p95_seconds"] == 1.0  # the 10 slow ones are the top 9 %
    assert now["http_latency_p99_seconds"] == 1.0
    assert round(now["slo_error_budget_remaining[availability]"], 4) == round(
        1 - (4 / 110) / 0.01, 4
    )
    assert round(now["slo_error_budget_remaining[latency]"], 4) == round(1 - (10 / 110) / 0.05, 4)

    later = gauges(1065.0)  # the first 100 left the window; the 10 slow ones remain
    assert later["http_error_rate"] == 0
    assert later["http_latency_p95_seconds"] == 1.0
    assert gauges(2000.0)["http_latency_p99_seconds"] == 0  # empty window


async def test_metrics_endpoint_exposes_valid_text_and_honours_the_token(
    runtime: Runtime,
) -> None:
    guarded = dataclasses.replace(
        runtime,
        settings=runtime.settings.model_copy(update={"metrics_token": SecretStr("s3cret-token")}),
    )
    app = create_app(runtime=guarded)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        assert (await client.get("/metrics")).status_code == 401
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        scraped = await client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
    for name in (
        "http_requests",
        "http_request_duration_seconds",
        "http_error_rate",
        "http_latency_p95_seconds",
        "http_latency_p99_seconds",
        "slo_error_budget_remaining",
        "queue_jobs_stalled",
        "queue_jobs_failed",
        "queue_lock_renewal_failures",
        "queue_job_duration_seconds",
        "queue_jobs",
        "db_pool_connections",
        "process_cpu_seconds",
    ):
        assert name in families, name
    assert families["http_request_duration_seconds"].type == "histogram"
    assert "s3cret-token" not in scraped.text


RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


def _promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    if found is None:
        missing_program("promtool is missing: apt-get install prometheus (Debian's package)")
    return subprocess.run([found, *args], input=stdin, capture_output=True, text=True, check=False)


async def test_promtool_accepts_the_exposition_and_the_alert_rules(
    client: httpx.AsyncClient,
) -> None:
    await client.get("/api/workflows")  # some traffic, so every family has samples
    scraped = await client.get("/metrics")
    checked = await asyncio.to_thread(_promtool, "check", "metrics", stdin=scraped.text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = await asyncio.to_thread(_promtool, "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


async def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    """`promtool test rules` runs deploy/prometheus/alerts.test.yml, which must show each alert
    of alerts.yml both firing and silent."""
    tests = RULES.with_name("alerts.test.yml")
    checked = await asyncio.to_thread(_promtool, "test", "rules", str(tests))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    alerts = set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    cases = re.findall(r"alertname: (\w+)\n\s+exp_alerts:(.*)", tests.read_text())
    firing = {name for name, rest in cases if rest.strip() != "[]"}
    silent = {name for name, rest in cases if rest.strip() == "[]"}
    assert alerts - firing == set(), "never shown firing"
    assert alerts - silent == set(), "never shown silent"


def test_every_dashboard_query_follows_the_job_instance_and_env_variables() -> None:
    dashboard = json.loads((RULES.parents[1] / "grafana" / "taskloom.json").read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance", "env"} <= variables
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            selectors = re.findall(r"\b[a-z_0-9]+\{([^}]*)\}", expr)
            assert selectors, expr
            for selector in selectors:
                for name in ("job", "instance", "env"):
                    assert f'{name}=~"${name}"' in selector, expr
            assert "[5m]" not in expr, f"rate windows use $__rate_interval: {expr}"


def test_the_dashboard_and_alerts_only_use_metrics_taskloom_exposes() -> None:
    """A renamed metric must not leave a dead panel or a silent alert behind."""
    exposed = {
        name.removesuffix(suffix)
        for family in REGISTRY.collect()
        for name in [family.name, *(s.name for s in family.samples)]
        for suffix in ("_bucket", "_count", "_sum", "")
    }
    dashboard = json.loads((RULES.parents[1] / "grafana" / "taskloom.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    expressions += re.findall(r"expr: (.+)", RULES.read_text())
    endings = "_total|_seconds|_bucket|_rate|_state|_jobs|_running|_remaining|_connections"
    pattern = rf"\b([a-z_]+(?:{endings}))\b"
    used = {name for expr in expressions for name in re.findall(pattern, expr)}
    outside = {"probe_success", "up"}

    def known(name: str) -> bool:
        base = name.removesuffix("_bucket")
        return base in exposed or base.removesuffix("_total") in exposed

    missing = {name for name in used if not known(name)} - outside
    assert not missing, f"not exposed by Taskloom: {sorted(missing)}"
    assert len(dashboard["panels"]) >= 10
