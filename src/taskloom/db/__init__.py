"""Database access: engines, the tenant-scoped transaction, the declarative base."""
