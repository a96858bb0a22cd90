"""Triggers: what starts a workflow by itself (schedules, inbound webhooks, events)."""
