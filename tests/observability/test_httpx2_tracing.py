"""The attributes of an httpx2 client span name the scheme, host, port and path of the request
and nothing of its query string or userinfo (the exporter scrubs again: span_scrubbing.py)."""

from __future__ import annotations

import httpx2

from taskloom.observability.httpx2_tracing import request_attributes


def test_httpx2_client_spans_name_no_query_or_userinfo() -> None:
    request = httpx2.Request(
        "GET", "https://someone:hunter2pass@api.example.test:8443/v1/models?limit=5&key=s3cret"
    )
    attributes = request_attributes(request)
    assert attributes == {
        "http.request.method": "GET",
        "url.scheme": "https",
        "url.full": "https://api.example.test:8443/v1/models",
        "server.address": "api.example.test",
        "server.port": 8443,
    }


def test_httpx2_client_spans_name_the_default_port_and_bracket_ipv6_hosts() -> None:
    attributes = request_attributes(httpx2.Request("POST", "http://[::1]/mcp?x=1"))
    assert attributes["url.full"] == "http://[::1]/mcp"
    assert attributes["server.port"] == 80
