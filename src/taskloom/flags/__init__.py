"""Feature flags with organization and user overrides."""
