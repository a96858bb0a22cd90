"""The model catalog: prices in US$ per million tokens, tiers, categories, downgrades."""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskloom.ai.catalog import CatalogError, load_catalog, parse_catalog
from tests.factories import register

PACKAGED = Path(__file__).parents[2] / "src/taskloom/ai/models.json"


def _data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PACKAGED.read_text())
    return data


def test_prices_are_per_million_tokens_input_and_output_separately() -> None:
    catalog = load_catalog()
    sonnet = catalog.model("claude-sonnet-4-5")
    assert sonnet.cost(1_000_000, 0) == Decimal("3.000000")
    assert sonnet.cost(0, 1_000_000) == Decimal("15.000000")
    # 1,234 input and 567 output tokens on Haiku 4.5 ($1 / $5): 0.001234 + 0.002835
    assert catalog.model("claude-haiku-4-5").cost(1234, 567) == Decimal("0.004069")
    # The seed's bug priced per-1K figures as per-million: 1,000 Sonnet input tokens is 0.3 ¢.
    assert sonnet.cost(1000, 0) == Decimal("0.003000")


def test_costs_round_half_up_to_the_micro_dollar() -> None:
    nano = load_catalog().model("gpt-4.1-nano")  # $0.10 / $0.40 per million
    assert nano.cost(5, 0) == Decimal("0.000001")  # 0.0000005 rounds up
    assert nano.cost(4, 0) == Decimal("0.000000")


def test_every_category_routes_to_a_model_of_the_requested_provider() -> None:
    catalog = load_catalog()
    for category in catalog.categories:
        for provider in ("anthropic", "openai"):
            assert catalog.for_category(category, provider).provider == provider
    assert catalog.for_category("reasoning").name == "claude-opus-5"
    assert catalog.for_category("quick", "openai").name == "gpt-4.1-nano"


def test_downgrades_follow_the_tiers_of_the_same_provider() -> None:
    catalog = load_catalog()
    chain = [catalog.model("claude-opus-5")]
    while (cheaper := catalog.cheaper(chain[-1])) is not None:
        chain.append(cheaper)
    assert [m.name for m in chain] == ["claude-opus-5", "claude-sonnet-4-5", "claude-haiku-4-5"]
    assert catalog.cheaper(catalog.model("gpt-4o")) is None  # in no tier


def test_unknown_names_are_refused_with_the_known_ones_listed() -> None:
    catalog = load_catalog()
    with pytest.raises(CatalogError, match="unknown model 'gpt-5'; known models: claude-3-5"):
        catalog.model("gpt-5")
    with pytest.raises(CatalogError, match="categories: analysis, coding"):
        catalog.for_category("poetry")


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda d: d["tiers"]["anthropic"].update(economy="nope"), "names unknown model 'nope'"),
        (lambda d: d["categories"].update(quick="cheap"), "unknown tier 'cheap'"),
        (lambda d: d["models"]["gpt-4o"].update(input=-1), "negative price"),
        (lambda d: d["models"]["gpt-4o"].pop("output"), "malformed"),
        (lambda d: d.update(default_category="poetry"), "default_category"),
    ],
)
def test_a_malformed_catalog_is_refused(change: Any, complaint: str) -> None:
    data = _data()
    change(data)
    with pytest.raises(CatalogError, match=complaint):
        parse_catalog(data)


def test_an_operator_catalog_file_replaces_the_packaged_one(tmp_path: Path) -> None:
    data = _data()
    data["version"] = "local-1"
    data["models"]["claude-haiku-4-5"]["input"] = 0.5
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data))
    catalog = load_catalog(path)
    assert catalog.version == "local-1"
    assert catalog.model("claude-haiku-4-5").cost(2_000_000, 0) == Decimal("1.000000")
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.json")


def test_no_tier_names_a_model_that_retires_within_90_days_of_the_catalog() -> None:
    catalog = load_catalog()
    horizon = date.fromisoformat(catalog.version) + timedelta(days=90)
    for provider, tiers in catalog.tiers.items():
        for tier, name in tiers.items():
            retires = catalog.model(name).retires
            assert retires is None or retires > horizon, f"{provider} {tier}: {name} retires"
    assert catalog.model("claude-opus-4-5").retires == date(2027, 1, 22)  # still callable by name


async def test_the_catalog_endpoint_shows_prices_tiers_and_retirement(
    client: httpx.AsyncClient,
) -> None:
    member = await register(client, label="catalog")
    response = await client.get("/api/ai/models", headers=member.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tiers"]["anthropic"]["premium"] == "claude-opus-5"
    by_name = {m["name"]: m for m in body["models"]}
    assert by_name["claude-opus-5"] == {
        "name": "claude-opus-5",
        "provider": "anthropic",
        "input_usd_per_million_tokens": "5.0",
        "output_usd_per_million_tokens": "25.0",
        "max_output_tokens": 64000,
        "retires": None,
    }
    assert by_name["claude-opus-4-5"]["retires"] == "2027-01-22"
    assert by_name["gpt-4.1-mini"]["input_usd_per_million_tokens"] == "0.4"
