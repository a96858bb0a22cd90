"""Organizations (tenants), memberships and roles."""
