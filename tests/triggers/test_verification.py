"""Inbound webhook verification, scheme by scheme. Requests are signed by the senders' own code
where they publish it (stripe-python, the standardwebhooks library, Taskloom's own webhook
signing) and by the documented algorithm, checked on the documented example, where they do not
(GitHub, Slack)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import standardwebhooks
import stripe

from taskloom.triggers.verification import (
    MAX_HEADER_LENGTH,
    TOLERANCE_SECONDS,
    Rejected,
    Scheme,
    Verified,
    dummy_verify,
    new_secret,
    verify,
)
from taskloom.webhooks import signing

NOW = 1_767_225_600  # the receiver's clock in these tests
CURRENT = "whsec_" + base64.b64encode(bytes(range(32))).decode()
PREVIOUS = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()
OTHER = "whsec_" + base64.b64encode(bytes(range(200, 232))).decode()
MESSAGE_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"

Signer = Callable[[str, bytes, int], dict[str, str]]


def sign_taskloom(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    return {"Taskloom-Signature": signing.signature_header([secret], timestamp, body)}


def sign_stripe(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=timestamp
    )
    return {"Stripe-Signature": header}


def sign_github(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """As GitHub documents it: the hex HMAC-SHA256 of the body, keyed with the secret."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}"}


def sign_slack(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """As Slack documents it: the hex HMAC-SHA256 of `v0:<timestamp>:<body>`."""
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256)
    return {
        "X-Slack-Signature": f"v0={digest.hexdigest()}",
        "X-Slack-Request-Timestamp": str(timestamp),
    }


def sign_standard(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    at = datetime.fromtimestamp(timestamp, UTC)
    return {
        "webhook-id": MESSAGE_ID,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standardwebhooks.Webhook(secret).sign(MESSAGE_ID, at, body),
    }


def sign_token(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@dataclass(frozen=True)
class Case:
    sign: Signer
    body: bytes
    delivery_id: str | None
    headers: dict[str, str] = field(default_factory=dict)  # besides the signer's

    def request(self, secret: str, *, timestamp: int = NOW) -> dict[str, str]:
        return {**self.headers, **self.sign(secret, self.body, timestamp)}


CASES = {
    Scheme.TASKLOOM: Case(
        sign_taskloom,
        b'{"data":{"status":"succeeded"},"type":"execution.succeeded"}',
        "5f0c6a4e-2b1d-4c8e-9a57-0d3f6b2e8c11",
        {"Taskloom-Delivery": "5f0c6a4e-2b1d-4c8e-9a57-0d3f6b2e8c11"},
    ),
    Scheme.STRIPE: Case(
        sign_stripe,
        b'{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","type":"invoice.paid"}',
        "evt_1NG8Du2eZvKYlo2CUI79vXWy",
    ),
    Scheme.GITHUB: Case(
        sign_github,
        b'{"action":"opened","number":1}',
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        {"X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"},
    ),
    Scheme.SLACK: Case(
        sign_slack,
        b'{"type":"event_callback","event_id":"Ev0PV52K21","event":{"type":"app_mention"}}',
        "Ev0PV52K21",
    ),
    Scheme.STANDARD: Case(sign_standard, b'{"type":"contact.created"}', MESSAGE_ID),
    Scheme.TOKEN: Case(
        sign_token, b'{"order":1234}', "order-1234", {"Idempotency-Key": "order-1234"}
    ),
}
SIGNED = [scheme for scheme in Scheme if scheme is not Scheme.TOKEN]
TIMESTAMPED = [Scheme.TASKLOOM, Scheme.STRIPE, Scheme.SLACK, Scheme.STANDARD]


@pytest.mark.parametrize("scheme", list(Scheme))
def test_a_request_made_with_the_current_secret_passes_with_its_delivery_id(scheme: Scheme) -> None:
    case = CASES[scheme]
    result = verify(scheme, [CURRENT, PREVIOUS], case.request(CURRENT), case.body, now=NOW)
    assert result == Verified(case.delivery_id)


@pytest.mark.parametrize("scheme", list(Scheme))
def test_header_names_are_matched_whatever_their_case(scheme: Scheme) -> None:
    case = CASES[scheme]
    lower = {name.lower(): value for name, value in case.request(CURRENT).items()}
    upper = {name.upper(): value for name, value in case.request(CURRENT).items()}
    assert verify(scheme, [CURRENT], lower, case.body, now=NOW) == Verified(case.delivery_id)
    assert verify(scheme, [CURRENT], upper, case.body, now=NOW) == Verified(case.delivery_id)


@pytest.mark.parametrize("scheme", SIGNED)
def test_a_tampered_body_is_rejected(scheme: Scheme) -> None:
    case = CASES[scheme]
    tampered = case.body.replace(b"}", b',"x":1}', 1)
    result = verify(scheme, [CURRENT], case.request(CURRENT), tampered, now=NOW)
    assert result == Rejected("signature_mismatch")


def test_the_token_scheme_vouches_for_the_sender_not_the_body() -> None:
    case = CASES[Scheme.TOKEN]
    assert verify(Scheme.TOKEN, [CURRENT], case.request(CURRENT), b"anything", now=NOW) == (
        Verified("order-1234")
    )
    tampered = {"Authorization": f"Bearer {CURRENT[:-2]}x="}
    assert verify(Scheme.TOKEN, [CURRENT], tampered, b"", now=NOW) == Rejected("signature_mismatch")


@pytest.mark.parametrize("scheme", list(Scheme))
def test_a_request_made_with_another_secret_is_rejected(scheme: Scheme) -> None:
    case = CASES[scheme]
    result = verify(scheme, [CURRENT, PREVIOUS], case.request(OTHER), case.body, now=NOW)
    assert result == Rejected("signature_mismatch")


@pytest.mark.parametrize("scheme", list(Scheme))
def test_the_previous_secret_passes_only_while_it_is_listed(scheme: Scheme) -> None:
    case = CASES[scheme]
    old = case.request(PREVIOUS)
    assert verify(scheme, [CURRENT, PREVIOUS], old, case.body, now=NOW) == (
        Verified(case.delivery_id)
    )
    assert verify(scheme, [CURRENT], old, case.body, now=NOW) == Rejected("signature_mismatch")


@pytest.mark.parametrize("scheme", list(Scheme))
def test_a_trigger_without_a_secret_accepts_nothing(scheme: Scheme) -> None:
    case = CASES[scheme]
    assert verify(scheme, [], case.request(CURRENT), case.body, now=NOW) == Rejected("no_secret")


@pytest.mark.parametrize("scheme", TIMESTAMPED)
@pytest.mark.parametrize(
    ("age", "passes"),
    [(0, True), (299, True), (-299, True), (300, True), (-300, True), (301, False), (-301, False)],
)
def test_a_timestamp_more_than_300_seconds_off_either_way_is_stale(
    scheme: Scheme, age: int, passes: bool
) -> None:
    case = CASES[scheme]
    headers = case.request(CURRENT, timestamp=NOW - age)
    expected = Verified(case.delivery_id) if passes else Rejected("timestamp_stale")
    assert TOLERANCE_SECONDS == 300
    assert verify(scheme, [CURRENT], headers, case.body, now=NOW) == expected


def test_a_stale_forgery_is_a_mismatch_not_a_stale_request() -> None:
    """The signature is checked first: "timestamp_stale" means genuinely signed but old."""
    case = CASES[Scheme.STRIPE]
    headers = case.request(OTHER, timestamp=NOW - 3600)
    result = verify(Scheme.STRIPE, [CURRENT], headers, case.body, now=NOW)
    assert result == Rejected("signature_mismatch")


TOO_LONG = "v" * (MAX_HEADER_LENGTH + 1)
ARABIC_INDIC_DIGITS = "t=\u0661\u0667,v1=ab"  # int() would take them
# (scheme, header, its new value or None to remove it from a valid request, the reason)
BROKEN: list[tuple[Scheme, str, str | None, str]] = [
    (Scheme.TASKLOOM, "Taskloom-Signature", None, "signature_missing"),
    (Scheme.TASKLOOM, "Taskloom-Signature", "", "signature_missing"),
    (Scheme.TASKLOOM, "Taskloom-Signature", f"t={NOW}", "signature_missing"),
    (Scheme.TASKLOOM, "Taskloom-Signature", "v1=ab", "timestamp_missing"),
    (Scheme.TASKLOOM, "Taskloom-Signature", "garbage", "malformed_header"),
    (Scheme.TASKLOOM, "Taskloom-Signature", "t=soon,v1=ab", "malformed_header"),
    (Scheme.TASKLOOM, "Taskloom-Delivery", "d" * 256, "malformed_header"),
    (Scheme.TASKLOOM, "Taskloom-Delivery", "a\x00b", "malformed_header"),
    (Scheme.STRIPE, "Stripe-Signature", None, "signature_missing"),
    (Scheme.STRIPE, "Stripe-Signature", f"t={NOW},v0=ab", "signature_missing"),
    (Scheme.STRIPE, "Stripe-Signature", "v1=ab,v0=cd", "timestamp_missing"),
    (Scheme.STRIPE, "Stripe-Signature", "t=1,t=2,v1=ab", "malformed_header"),
    (Scheme.STRIPE, "Stripe-Signature", "t=1,v1=ab,,", "malformed_header"),
    (Scheme.STRIPE, "Stripe-Signature", "t=1.7e9,v1=ab", "malformed_header"),
    (Scheme.STRIPE, "Stripe-Signature", f"t=+{NOW},v1=ab", "malformed_header"),
    (Scheme.STRIPE, "Stripe-Signature", f"t=0{NOW},v1=ab", "malformed_header"),
    (Scheme.STRIPE, "Stripe-Signature", "t=1_7,v1=ab", "malformed_header"),
    (Scheme.STRIPE, "Stripe-Signature", ARABIC_INDIC_DIGITS, "malformed_header"),
    (Scheme.STRIPE, "Stripe-Signature", "t=" + "9" * 20 + ",v1=ab", "malformed_header"),
    (Scheme.STRIPE, "Stripe-Signature", TOO_LONG, "malformed_header"),
    (Scheme.GITHUB, "X-Hub-Signature-256", None, "signature_missing"),
    (Scheme.GITHUB, "X-Hub-Signature-256", "sha1=ab", "malformed_header"),
    (Scheme.GITHUB, "X-Hub-Signature-256", "abcdef", "malformed_header"),
    (Scheme.GITHUB, "X-Hub-Signature-256", "sha256=é", "malformed_header"),
    (Scheme.GITHUB, "X-GitHub-Delivery", "\t", "malformed_header"),
    (Scheme.SLACK, "X-Slack-Signature", None, "signature_missing"),
    (Scheme.SLACK, "X-Slack-Request-Timestamp", None, "timestamp_missing"),
    (Scheme.SLACK, "X-Slack-Signature", "v1=ab", "malformed_header"),
    (Scheme.SLACK, "X-Slack-Request-Timestamp", "1.5e9", "malformed_header"),
    (Scheme.SLACK, "X-Slack-Request-Timestamp", f" {NOW}", "malformed_header"),
    (Scheme.SLACK, "X-Slack-Request-Timestamp", "-5", "malformed_header"),
    (Scheme.STANDARD, "webhook-signature", None, "signature_missing"),
    (Scheme.STANDARD, "webhook-timestamp", None, "timestamp_missing"),
    (Scheme.STANDARD, "webhook-id", None, "id_missing"),
    (Scheme.STANDARD, "webhook-signature", "v1a,AAAA", "signature_missing"),
    (Scheme.STANDARD, "webhook-signature", "garbage", "malformed_header"),
    (Scheme.STANDARD, "webhook-timestamp", f"{NOW}.5", "malformed_header"),
    (Scheme.STANDARD, "webhook-id", "m" * 256, "malformed_header"),
    (Scheme.TOKEN, "Authorization", None, "signature_missing"),
    (Scheme.TOKEN, "Authorization", "Basic dXNlcjpwYXNz", "malformed_header"),
    (Scheme.TOKEN, "Authorization", "Bearer ", "malformed_header"),
    (Scheme.TOKEN, "Authorization", f"Bearer {TOO_LONG}", "malformed_header"),
    (Scheme.TOKEN, "Idempotency-Key", "k" * 256, "malformed_header"),
]


@pytest.mark.parametrize(("scheme", "name", "value", "reason"), BROKEN)
def test_missing_and_malformed_headers_are_rejected_with_their_reason(
    scheme: Scheme, name: str, value: str | None, reason: str
) -> None:
    case = CASES[scheme]
    headers = {key: text for key, text in case.request(CURRENT).items() if key != name}
    if value is not None:
        headers[name] = value
    assert verify(scheme, [CURRENT], headers, case.body, now=NOW) == Rejected(reason)


def test_a_rejection_never_holds_the_secret_or_the_expected_signature() -> None:
    case = CASES[Scheme.GITHUB]
    expected = sign_github(CURRENT, case.body, NOW)["X-Hub-Signature-256"]
    for headers in ({}, {"X-Hub-Signature-256": "sha256=00"}, {"X-Hub-Signature-256": "x"}):
        result = verify(Scheme.GITHUB, [CURRENT], headers, case.body, now=NOW)
        assert isinstance(result, Rejected)
        assert CURRENT not in result.reason
        assert expected.removeprefix("sha256=") not in result.reason


def test_the_token_may_come_in_its_own_header_or_beside_another_authorization() -> None:
    own = {"X-Taskloom-Token": CURRENT}
    assert verify(Scheme.TOKEN, [CURRENT], own, b"", now=NOW) == Verified(None)
    beside = {"Authorization": "Basic dXNlcjpwYXNz", "X-Taskloom-Token": CURRENT}
    assert verify(Scheme.TOKEN, [CURRENT], beside, b"", now=NOW) == Verified(None)
    lowercase_scheme = {"authorization": f"bearer {CURRENT}"}
    assert verify(Scheme.TOKEN, [CURRENT], lowercase_scheme, b"", now=NOW) == Verified(None)


def test_the_taskloom_header_signed_during_a_rotation_passes_with_either_secret() -> None:
    """A sending Taskloom signs with its new and its old secret while both are valid: a receiver
    that knows only one of them lets the request through."""
    body = CASES[Scheme.TASKLOOM].body
    headers = {"Taskloom-Signature": signing.signature_header([CURRENT, PREVIOUS], NOW, body)}
    assert verify(Scheme.TASKLOOM, [PREVIOUS], headers, body, now=NOW) == Verified(None)
    assert verify(Scheme.TASKLOOM, [CURRENT], headers, body, now=NOW) == Verified(None)
    assert verify(Scheme.TASKLOOM, [OTHER], headers, body, now=NOW) == (
        Rejected("signature_mismatch")
    )


def test_githubs_documented_example_verifies() -> None:
    """docs.github.com, "Validating webhook deliveries": "Testing the webhook payload
    validation"."""
    secret, body = "It's a Secret to Everybody", b"Hello, World!"
    header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert sign_github(secret, body, NOW) == {"X-Hub-Signature-256": header}
    headers = {"X-Hub-Signature-256": header}
    assert verify(Scheme.GITHUB, [secret], headers, body) == Verified(None)
    assert verify(Scheme.GITHUB, [secret], headers, b"Hello, World?") == (
        Rejected("signature_mismatch")
    )


# Slack's "Verifying requests from Slack" example (also in slack_sdk's own tests): a slash
# command, form-encoded, so no event_id.
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TIMESTAMP = 1531420618
SLACK_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmi"
    b"bIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


def test_slacks_documented_example_verifies() -> None:
    headers = {
        "X-Slack-Signature": SLACK_SIGNATURE,
        "X-Slack-Request-Timestamp": str(SLACK_TIMESTAMP),
    }
    assert sign_slack(SLACK_SECRET, SLACK_BODY, SLACK_TIMESTAMP) == headers
    at = SLACK_TIMESTAMP
    assert verify(Scheme.SLACK, [SLACK_SECRET], headers, SLACK_BODY, now=at) == Verified(None)
    assert verify(Scheme.SLACK, [SLACK_SECRET], headers, SLACK_BODY, now=at + 301) == (
        Rejected("timestamp_stale")
    )


def _stripe_accepts(body: bytes, header: str, secret: str) -> bool:
    try:
        stripe.WebhookSignature.verify_header(body, header, secret, tolerance=TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError:
        return False
    return True


def test_stripe_python_agrees_with_our_verdicts() -> None:
    """stripe-python's own check (real clock) accepts and refuses the same requests, and the
    event it constructs has the id we give as the delivery id."""
    body = CASES[Scheme.STRIPE].body
    timestamp = int(time.time())
    header = sign_stripe(CURRENT, body, timestamp)["Stripe-Signature"]
    tampered = body.replace(b"invoice.paid", b"invoice.void")
    stale = sign_stripe(CURRENT, body, timestamp - 301)["Stripe-Signature"]
    for request_body, request_header, secret in [
        (body, header, CURRENT),
        (tampered, header, CURRENT),
        (body, header, OTHER),
        (body, stale, CURRENT),
    ]:
        ours = verify(Scheme.STRIPE, [secret], {"Stripe-Signature": request_header}, request_body)
        assert isinstance(ours, Verified) == _stripe_accepts(request_body, request_header, secret)
    event = stripe.Webhook.construct_event(body, header, CURRENT)
    assert verify(Scheme.STRIPE, [CURRENT], {"Stripe-Signature": header}, body) == (
        Verified(event.id)
    )


def test_a_stripe_header_passes_when_any_of_its_v1_signatures_matches() -> None:
    body = CASES[Scheme.STRIPE].body
    compute = stripe.WebhookSignature._compute_signature
    good = compute(f"{NOW}.{body.decode()}", CURRENT)
    wrong = compute(f"{NOW}.{body.decode()}", OTHER)
    header = f"t={NOW},v1={wrong},v1={good},v0={wrong}"
    assert verify(Scheme.STRIPE, [CURRENT], {"Stripe-Signature": header}, body, now=NOW) == (
        Verified("evt_1NG8Du2eZvKYlo2CUI79vXWy")
    )


def test_the_standardwebhooks_library_and_we_agree_on_a_secret_from_new_secret() -> None:
    secret = new_secret()
    webhook = standardwebhooks.Webhook(secret)
    body = CASES[Scheme.STANDARD].body
    timestamp = int(time.time())
    headers = sign_standard(secret, body, timestamp)
    assert webhook.verify(body, headers) == json.loads(body)
    assert verify(Scheme.STANDARD, [secret], headers, body) == Verified(MESSAGE_ID)

    tampered = body.replace(b"created", b"deleted")
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        webhook.verify(tampered, headers)
    assert verify(Scheme.STANDARD, [secret], headers, tampered) == Rejected("signature_mismatch")


def test_a_standard_signature_list_passes_when_any_v1_entry_matches() -> None:
    """The header lists one signature per secret during a sender's rotation, and may carry
    asymmetric (v1a) ones, which are not ours to check."""
    body = CASES[Scheme.STANDARD].body
    at = datetime.fromtimestamp(NOW, UTC)
    old = standardwebhooks.Webhook(PREVIOUS).sign(MESSAGE_ID, at, body)
    new = standardwebhooks.Webhook(CURRENT).sign(MESSAGE_ID, at, body)
    headers = {
        "webhook-id": MESSAGE_ID,
        "webhook-timestamp": str(NOW),
        "webhook-signature": f"v1a,c2lnbmF0dXJl {old} {new}",
    }
    assert verify(Scheme.STANDARD, [CURRENT], headers, body, now=NOW) == Verified(MESSAGE_ID)
    assert verify(Scheme.STANDARD, [PREVIOUS], headers, body, now=NOW) == Verified(MESSAGE_ID)
    assert verify(Scheme.STANDARD, [OTHER], headers, body, now=NOW) == (
        Rejected("signature_mismatch")
    )


def test_new_secret_is_whsec_and_padded_standard_base64_of_32_random_bytes() -> None:
    secrets = {new_secret() for _ in range(20)}
    assert len(secrets) == 20
    for secret in secrets:
        assert secret.startswith("whsec_")
        encoded = secret.removeprefix("whsec_")
        assert len(encoded) == 44
        assert encoded.endswith("=")
        assert len(base64.b64decode(encoded, validate=True)) == 32


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,  # deeper than the JSON parser's recursion limit
        b'{"id": ' + b"1" * 5000 + b', "event_id": ' + b"1" * 5000 + b"}",  # int digit limit
        b"[1, 2, 3]",
        b'"a string"',
        b"not json",
        b'{"id": 5, "event_id": null}',
        b'{"id": "\\u0000", "event_id": "\\ud800"}',
        b'{"id": "' + b"e" * 256 + b'", "event_id": "' + b"e" * 256 + b'"}',
        '{"id": "évt", "event_id": "év"}'.encode(),
    ],
)
@pytest.mark.parametrize("scheme", [Scheme.STRIPE, Scheme.SLACK])
def test_a_signed_body_that_names_no_usable_event_id_verifies_without_one(
    scheme: Scheme, body: bytes
) -> None:
    headers = CASES[scheme].sign(CURRENT, body, NOW)
    assert verify(scheme, [CURRENT], headers, body, now=NOW) == Verified(None)


def test_a_signed_body_that_is_not_utf8_verifies_where_the_scheme_signs_bytes() -> None:
    body = b"\xff\xfe\x00binary"
    for scheme in (Scheme.GITHUB, Scheme.SLACK):
        headers = CASES[scheme].sign(CURRENT, body, NOW)
        assert verify(scheme, [CURRENT], headers, body, now=NOW) == Verified(None)


HOSTILE_VALUES: list[Any] = [
    "x" * 1_000_000,
    "t=\u0661,v1=\u00e9",
    "\ud800",
    "\x00",
    "t=99999999999999999999999999,v1=00",
    f"t={NOW},v1=" + "a" * 64 * 120,
    "v1," + "A" * 8000,
    " " * 100,
    ",,,,",
    "=",
    "Bearer \udcff",
    None,
    b"bytes",
    12345,
    ["a", "list"],
]
HEADER_NAMES = [
    "Taskloom-Signature",
    "Taskloom-Delivery",
    "Stripe-Signature",
    "X-Hub-Signature-256",
    "X-GitHub-Delivery",
    "X-Slack-Signature",
    "X-Slack-Request-Timestamp",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "Authorization",
    "X-Taskloom-Token",
    "Idempotency-Key",
]
HOSTILE_BODIES = [b"", b"\xff\xfe", b"[" * 100_000, b"[1,2]", b'{"id": 1}', b"9" * 5000]


@pytest.mark.parametrize("scheme", list(Scheme))
def test_verify_never_raises_on_hostile_requests(scheme: Scheme) -> None:
    forged: list[dict[Any, Any]] = [{}, {1: "not a str name", None: None}]
    forged += [dict.fromkeys(HEADER_NAMES, value) for value in HOSTILE_VALUES]
    for headers in forged:
        for body in HOSTILE_BODIES:
            result = verify(scheme, [CURRENT, PREVIOUS], headers, body, now=NOW)
            assert isinstance(result, Rejected), (list(headers), body[:20])
    # A genuine request with one header replaced: still an answer, whichever it is.
    for name in HEADER_NAMES:
        for value in HOSTILE_VALUES:
            headers = {**CASES[scheme].request(CURRENT), name: value}
            result = verify(scheme, [CURRENT], headers, CASES[scheme].body, now=NOW)
            assert isinstance(result, Verified | Rejected), (name, str(value)[:20])


def test_dummy_verify_costs_what_a_failed_verification_costs() -> None:
    body = b"x" * (1 << 20)  # large enough that the HMAC over it dominates both
    headers = {"X-Hub-Signature-256": "sha256=" + "0" * 64}
    dummy_verify(b"")  # an empty body too

    def fastest(run: Callable[[], object]) -> float:
        timings = []
        for _ in range(7):
            started = time.perf_counter()
            for _ in range(10):
                run()
            timings.append(time.perf_counter() - started)
        return min(timings)

    failed = fastest(lambda: verify(Scheme.GITHUB, [CURRENT], headers, body, now=NOW))
    dummy = fastest(lambda: dummy_verify(body))
    assert 1 / 3 < dummy / failed < 3
