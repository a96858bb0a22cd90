"""Logging, request ids, metrics."""
