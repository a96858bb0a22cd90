"""How a sender calls a webhook trigger, as the Triggers tab explains it: what each verification
scheme expects in the request (triggers/verification.py checks exactly this), and an example
`curl` command.

For `token` the example passes as it is, once `<secret>` is replaced (or holds the real secret,
on the one page that shows it). The other schemes sign the body (most with a timestamp that must
be within five minutes), which a fixed command cannot do: senders sign for you, so the page
names the headers instead (the triggers documentation in docs/ has each scheme in full)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from taskloom.triggers.verification import Scheme

EXAMPLE_BODY = '{"hello": "world"}'
SECRET_PLACEHOLDER = "<secret>"  # noqa: S105 (shown in place of the secret)


@dataclass(frozen=True)
class SchemeHelp:
    name: str  # as people know it
    headers: str  # what the request must carry
    delivery_id: str  # what de-duplicates a retried delivery
    example: tuple[str, ...] = ()  # the signature headers, with what the sender computes in <>


SCHEMES: dict[str, SchemeHelp] = {
    Scheme.TOKEN: SchemeHelp(
        "Token",
        "Authorization: Bearer <secret> (or X-Taskloom-Token: <secret>): the secret itself, "
        "no signature.",
        "the Idempotency-Key header, when sent",
    ),
    Scheme.TASKLOOM: SchemeHelp(
        "Taskloom",
        'Taskloom-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body, keyed with '
        "the secret>: what a Taskloom outgoing webhook with this secret sends.",
        "the Taskloom-Delivery header",
        ("Taskloom-Signature: t=<t>,v1=<signature>", "Taskloom-Delivery: <id>"),
    ),
    Scheme.STRIPE: SchemeHelp(
        "Stripe",
        'Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>, keyed with '
        "the endpoint's signing secret, which Stripe makes: give it to the trigger.",
        "the event's id in the body (evt_…)",
        ("Stripe-Signature: t=<t>,v1=<signature>",),
    ),
    Scheme.GITHUB: SchemeHelp(
        "GitHub",
        "X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>, as GitHub signs with the "
        "webhook's secret (set it to this secret; content type application/json).",
        "the X-GitHub-Delivery header",
        ("X-Hub-Signature-256: sha256=<signature>", "X-GitHub-Delivery: <id>"),
    ),
    Scheme.SLACK: SchemeHelp(
        "Slack",
        'X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<timestamp>:" + body> and '
        "X-Slack-Request-Timestamp: <unix seconds>, keyed with the app's signing secret, which "
        "Slack makes: give it to the trigger.",
        "the Events API's event_id in the body",
        ("X-Slack-Request-Timestamp: <t>", "X-Slack-Signature: v0=<signature>"),
    ),
    Scheme.STANDARD: SchemeHelp(
        "Standard Webhooks",
        "webhook-id, webhook-timestamp (unix seconds) and webhook-signature: v1,<base64 "
        'HMAC-SHA256 of "<id>.<timestamp>." + body, keyed with the base64 after whsec_>, as '
        "the Standard Webhooks libraries sign (a Svix-hosted sender makes its own secret: give "
        "it to the trigger).",
        "the webhook-id header",
        ("webhook-id: <id>", "webhook-timestamp: <t>", "webhook-signature: v1,<signature>"),
    ),
}
TIMESTAMP_NOTE = "Signed timestamps must be within 5 minutes of this server's clock."


def absolute_url(url: str, base: str) -> str:
    """The hook's URL as a sender must write it: `url` when PUBLIC_URL made it absolute, else
    on `base` (the address this page was reached at)."""
    return url if "://" in url else base.rstrip("/") + url


def curl_example(scheme: str, url: str, secret: str | None = None) -> str:
    """A command that starts the workflow: complete for `token`, with the scheme's headers
    left for the sender to compute otherwise."""
    headers = ["Content-Type: application/json"]
    if scheme == Scheme.TOKEN:
        headers.append(f"Authorization: Bearer {secret or SECRET_PLACEHOLDER}")
    elif scheme in SCHEMES:
        headers.extend(SCHEMES[scheme].example)
    lines = [f"curl -X POST {shlex.quote(url)}"]
    lines += [f"  -H {shlex.quote(h)}" for h in headers]
    lines.append(f"  --data {shlex.quote(EXAMPLE_BODY)}")
    return " \\\n".join(lines)
