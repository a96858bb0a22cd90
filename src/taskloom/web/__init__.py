"""The web UI: server-rendered pages under /ui, served by the API process.

Pages call the same domain services as the JSON API inside the same tenant transaction
(`auth.deps.open_request_context`); only the credential differs: HttpOnly cookies scoped to
/ui instead of a bearer header, which is why every form carries a CSRF token. docs/UI.md.
"""
