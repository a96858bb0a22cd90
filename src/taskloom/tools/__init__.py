"""Tool connections (Notion, Linear, GitHub, MCP servers)."""
