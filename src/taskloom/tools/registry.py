"""Every kind of connection an organization may create, by provider name."""

from __future__ import annotations

from taskloom.ai.connections import AnthropicKeys, OpenAIKeys
from taskloom.tools.base import ToolProvider
from taskloom.tools.providers.github import GitHubProvider
from taskloom.tools.providers.http import HttpConnectionProvider
from taskloom.tools.providers.linear import LinearProvider
from taskloom.tools.providers.mcp import McpProvider
from taskloom.tools.providers.notion import NotionProvider

PROVIDERS: dict[str, ToolProvider] = {
    "notion": NotionProvider(),
    "linear": LinearProvider(),
    "github": GitHubProvider(),
    "mcp": McpProvider(),
    "http": HttpConnectionProvider(),
    "anthropic": AnthropicKeys(),
    "openai": OpenAIKeys(),
}

# Connections that hold a key for `ai` steps rather than tools.
AI_PROVIDERS = frozenset({"anthropic", "openai"})

# Providers whose SDK speaks through httpx2 (the fork the anthropic, openai and mcp SDKs use);
# the others get a plain httpx client.
HTTPX2_PROVIDERS = frozenset({"mcp", "anthropic", "openai"})
