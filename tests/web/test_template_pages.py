"""The "New workflow" page offers the workflow templates (workflows/templates.py) and fills
its form from the one chosen."""

from __future__ import annotations

import json

import httpx

from taskloom.workflows import templates
from tests.web.support import post_form, text_of


async def test_the_new_workflow_page_lists_the_templates_and_fills_the_form_from_one(
    owner_browser: httpx.AsyncClient,
) -> None:
    page = await owner_browser.get("/ui/workflows/new")
    assert page.status_code == 200
    shown = text_of(page)
    for template in templates.available().values():
        assert template.workflow.name in shown
        assert f'href="/ui/workflows/new?template={template.name}"' in page.text
    chosen = await owner_browser.get("/ui/workflows/new?template=two-step-approval")
    assert chosen.status_code == 200
    assert 'value="Two-step approval"' in chosen.text
    assert "&#34;approvers&#34;" in chosen.text or '"approvers"' in chosen.text
    assert "From the two-step-approval template" in chosen.text
    definition = templates.available()["two-step-approval"].workflow.definition.stored()
    created = await post_form(
        owner_browser,
        "/ui/workflows/new",
        {"name": "Two-step approval", "definition": json.dumps(definition)},
    )
    assert created.status_code == 303, created.text
    assert (await owner_browser.get(created.headers["location"])).status_code == 200
