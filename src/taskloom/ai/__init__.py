"""AI model calls and their usage accounting."""
