"""Taskloom: multi-tenant AI workflow automation."""

__version__ = "0.1.0"
