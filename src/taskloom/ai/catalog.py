"""The model catalog: which models exist, what they cost and which tier each category uses.
It is a versioned data file (`ai/models.json`, or AI_MODEL_CATALOG) so an operator can add a
model or correct a price without a release. Prices are US$ per **million** tokens, input and
output separately; all cost math is Decimal, rounded to the micro-dollar stored in `ai_usage`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

MILLION = Decimal(1_000_000)
MICRO_DOLLAR = Decimal("0.000001")


class CatalogError(ValueError):
    """The catalog file is malformed; the message names the entry."""


@dataclass(frozen=True)
class ModelPrice:
    name: str
    provider: str
    input_per_million: Decimal
    output_per_million: Decimal
    max_output_tokens: int
    retires: date | None = None  # the provider's announced end of life

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """US$ for these token counts, rounded half-up to the micro-dollar."""
        raw = (
            Decimal(input_tokens) * self.input_per_million
            + Decimal(output_tokens) * self.output_per_million
        ) / MILLION
        return raw.quantize(MICRO_DOLLAR, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Catalog:
    version: str
    default_provider: str
    default_category: str
    tier_order: tuple[str, ...]  # most expensive first
    categories: dict[str, str]  # category -> tier
    tiers: dict[str, dict[str, str]]  # provider -> tier -> model
    models: dict[str, ModelPrice]

    def model(self, name: str) -> ModelPrice:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise CatalogError(f"unknown model {name!r}; known models: {known}") from None

    def for_category(self, category: str, provider: str | None = None) -> ModelPrice:
        provider = provider or self.default_provider
        if category not in self.categories:
            known = ", ".join(sorted(self.categories))
            raise CatalogError(f"unknown category {category!r}; categories: {known}")
        if provider not in self.tiers:
            raise CatalogError(f"the catalog has no tiers for provider {provider!r}")
        return self.model(self.tiers[provider][self.categories[category]])

    def cheaper(self, model: ModelPrice) -> ModelPrice | None:
        """The model of the next cheaper tier of the same provider, if `model` is in a tier."""
        tiers = self.tiers.get(model.provider, {})
        tier = next((t for t, name in tiers.items() if name == model.name), None)
        if tier is None:
            return None
        position = self.tier_order.index(tier)
        for lower in self.tier_order[position + 1 :]:
            if lower in tiers:
                return self.model(tiers[lower])
        return None


def parse_catalog(data: dict[str, Any]) -> Catalog:
    """Validate a catalog document; every model a tier names must exist with that provider."""
    try:
        models = {
            name: ModelPrice(
                name=name,
                provider=str(entry["provider"]),
                input_per_million=Decimal(str(entry["input"])),
                output_per_million=Decimal(str(entry["output"])),
                max_output_tokens=int(entry["max_output_tokens"]),
                retires=date.fromisoformat(entry["retires"]) if "retires" in entry else None,
            )
            for name, entry in data["models"].items()
        }
        catalog = Catalog(
            version=str(data["version"]),
            default_provider=str(data["default_provider"]),
            default_category=str(data["default_category"]),
            tier_order=tuple(data["tier_order"]),
            categories=dict(data["categories"]),
            tiers={p: dict(t) for p, t in data["tiers"].items()},
            models=models,
        )
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise CatalogError(f"malformed model catalog: {exc!r}") from None
    for name, price in models.items():
        if price.input_per_million < 0 or price.output_per_million < 0:
            raise CatalogError(f"model {name!r} has a negative price")
    for category, tier in catalog.categories.items():
        if tier not in catalog.tier_order:
            raise CatalogError(f"category {category!r} names unknown tier {tier!r}")
    for provider, tiers in catalog.tiers.items():
        for tier, name in tiers.items():
            if tier not in catalog.tier_order:
                raise CatalogError(f"{provider} tier {tier!r} is not in tier_order")
            if name not in models or models[name].provider != provider:
                raise CatalogError(f"{provider} tier {tier!r} names unknown model {name!r}")
    if catalog.default_category not in catalog.categories:
        raise CatalogError(f"default_category {catalog.default_category!r} is not a category")
    return catalog


@lru_cache(maxsize=4)
def load_catalog(path: Path | None = None) -> Catalog:
    """The catalog at `path`, or the packaged one. Cached: the file is read once per process."""
    if path is None:
        text = resources.files("taskloom.ai").joinpath("models.json").read_text("utf-8")
    else:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise CatalogError(f"cannot read AI_MODEL_CATALOG {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CatalogError(f"the model catalog is not JSON: {exc}") from None
    return parse_catalog(data)
