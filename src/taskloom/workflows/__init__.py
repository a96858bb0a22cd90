"""Workflows, their executions and execution steps."""
