"""Taskloom: multi-tenant AI workflow automation."""

from importlib.metadata import version

__version__ = version("taskloom")  # said once, in pyproject.toml
