"""Signed outgoing webhooks and their delivery log."""
