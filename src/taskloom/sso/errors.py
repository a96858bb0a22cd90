"""Why a single sign-on was refused: one code per reason (docs/SSO.md), each audited as
`auth.sso_failed` {provider, reason} by the flow, and answered as the usual JSON error (or the
sign-in page with the message, in the browser)."""

from __future__ import annotations

from taskloom.errors import DomainError

# code -> (HTTP status, message a person can act on)
REASONS: dict[str, tuple[int, str]] = {
    "sso_unknown_provider": (404, "There is no such sign-in provider."),
    "sso_provider_disabled": (403, "Sign-in with this provider is turned off."),
    "sso_provider_unreachable": (502, "The sign-in provider could not be reached; try again."),
    "sso_provider_error": (400, "The sign-in provider refused the sign-in."),
    "sso_flow_not_started": (
        400,
        "This sign-in was not started in this browser (or its cookie was lost): start again.",
    ),
    "sso_flow_expired": (400, "This sign-in took too long or was already used: start again."),
    "sso_bad_state": (400, "This sign-in answer does not belong to this browser: start again."),
    "sso_wrong_issuer": (400, "The sign-in answer comes from another issuer than configured."),
    "sso_wrong_audience": (400, "The provider's ID token was issued for another application."),
    "sso_token_expired": (400, "The provider's ID token has expired: start again."),
    "sso_nonce_mismatch": (400, "The provider's ID token does not belong to this sign-in."),
    "sso_invalid_id_token": (400, "The provider's ID token could not be verified."),
    "sso_email_unverified": (
        403,
        "The provider does not vouch for this e-mail address: verify it there first.",
    ),
    "sso_no_account": (
        403,
        "There is no account for this person, and this provider does not create accounts.",
    ),
    "sso_link_required": (
        403,
        "An account with this e-mail address already exists: enter its password once to link "
        "it to this provider.",
    ),
    "sso_link_failed": (401, "That password is not right, or the link expired: start again."),
    "sso_bad_exchange": (400, "That sign-in code is unknown, used, expired or not yours."),
    "sso_session_ended": (401, "The provider ended this session: sign in again."),
}


class SsoRefused(DomainError):
    """A refused step of the flow; `code` names the reason."""

    def __init__(self, code: str, message: str | None = None) -> None:
        status, default = REASONS[code]
        super().__init__(message or default, code=code)
        self.status_code = status
        self.provider: str | None = None  # the provider's slug, when the URL does not name it
