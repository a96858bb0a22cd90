"""Single sign-on with OpenID Connect: providers, group mappings, identities, the sign-in flow."""
