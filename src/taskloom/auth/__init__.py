"""Authentication: users, sessions, refresh-token rotation, API keys."""
