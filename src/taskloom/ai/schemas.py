"""Bodies of /api/ai: the month's usage and the organization's and workflows' budgets."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field


class BudgetUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # null: no limit (spend is still tracked). At most 10 million dollars a month.
    monthly_budget_usd: Decimal | None = Field(ge=0, le=10_000_000, max_digits=12, decimal_places=2)


class WorkflowBudgetUpdate(BudgetUpdate):
    """null: the workflow has no budget of its own (the organization's still applies)."""


class WorkflowBudget(BaseModel):
    """A workflow's month: its budget, what its executions spent and hold for calls in flight."""

    workflow_id: str
    name: str
    month: str
    budget_usd: str | None
    spent_usd: str
    reserved_usd: str
    remaining_usd: str | None


class ModelUsage(BaseModel):
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: str


class InstanceKeyUsage(BaseModel):
    """The part of the month's spend made with the instance's AI keys, against the allowance
    every organization has on them (AI_INSTANCE_KEY_MONTHLY_BUDGET_USD)."""

    budget_usd: str
    spent_usd: str
    reserved_usd: str
    remaining_usd: str


class UsageSummary(BaseModel):
    month: str
    budget_usd: str | None
    spent_usd: str
    reserved_usd: str
    remaining_usd: str | None
    instance_key: InstanceKeyUsage
    models: list[ModelUsage]
    workflows: list[WorkflowBudget] = Field(
        description="Workflows with a budget of their own or with spend this month, by name"
    )


class CatalogModel(BaseModel):
    name: str
    provider: str
    input_usd_per_million_tokens: str
    output_usd_per_million_tokens: str
    max_output_tokens: int
    retires: date | None = Field(
        default=None, description="The provider's announced end of life: choose another model."
    )


class CatalogOut(BaseModel):
    version: str
    default_category: str
    categories: dict[str, str]
    tiers: dict[str, dict[str, str]]
    models: list[CatalogModel]
