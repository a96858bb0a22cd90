"""The AI tests use the tool tests' app: outbound calls may reach the fakes on 127.0.0.1."""

from tests.tools.conftest import admin, tools_api, tools_app, tools_runtime, tools_settings

__all__ = ["admin", "tools_api", "tools_app", "tools_runtime", "tools_settings"]
