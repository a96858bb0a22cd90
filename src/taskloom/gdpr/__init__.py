"""GDPR data export and erasure requests."""
