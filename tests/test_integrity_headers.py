"""I4, I5 on the header rules themselves (gateway.upstream.headers); the end-to-end regressions against a
real ``serve`` process are in tests/test_integrity_serve.py."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import BadRequest, Forbidden
from gateway.upstream.headers import (check_client_headers, client_response_headers, never_forwarded,
                                     upstream_request_headers)


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize("name", [
    "Mcp_Session_Id", "mcp_session_id", "Mcp-Session_Id", "Mcp_Method", "Mcp_Name", "MCP_Protocol_Version",
    "Last_Event_ID", "Mcp_Param_Region", "Mcp-Param_Region",
    # PHP also turns "." into "_" in variable names: HTTP_MCP_SESSION_ID again
    "Mcp.Session.Id", "Mcp-Session.Id", "Last.Event.ID", "Mcp~Method",
])
def test_i4_underscore_spellings_of_mcp_headers_are_refused(name):
    with pytest.raises(BadRequest) as caught:
        check_client_headers(headers((name, "x")))
    assert caught.value.reason == "underscore_header"


@pytest.mark.parametrize("name", ["Mcp-Session-Id", "Mcp-Method", "Mcp-Name", "MCP-Protocol-Version", "Last-Event-ID", "Mcp-Param-Region"])
def test_i4_mcp_headers_sent_twice_are_refused_whatever_the_letter_case(name):
    with pytest.raises(BadRequest) as caught:
        check_client_headers(headers((name, "a"), (name.lower(), "b")))
    assert caught.value.reason == "repeated_header"


def test_i4_a_repeated_origin_is_403():
    with pytest.raises(Forbidden) as caught:
        check_client_headers(headers(("Origin", "https://app.example.com"), ("origin", "https://evil.example")))
    assert caught.value.status == 403 and caught.value.reason == "multiple_origins"


def test_i4_single_mcp_headers_and_other_repeats_pass():
    check_client_headers(headers(("Mcp-Session-Id", "s"), ("Mcp-Method", "tools/call"), ("Mcp-Param-A", "1"),
                                 ("Mcp-Param-B", "2"), ("Accept", "a"), ("Accept", "b"), ("Origin", "https://x")))


@pytest.mark.parametrize("name, value", [
    ("Mcp-Session-Id", "\xff\xfe"), ("Mcp-Session-Id", "a b"), ("Mcp-Session-Id", "caf\u00e9"), ("Mcp-Name", "x\x7f"),
    ("MCP-Protocol-Version", "2025-11-25\t"), ("Last-Event-ID", "\u2028"),
])
def test_i4_mcp_header_values_must_be_printable_ascii(name, value):
    """A non-ASCII session id gave a 500 (hashing it failed), and aiohttp's client would drop its bytes."""
    with pytest.raises(BadRequest) as caught:
        check_client_headers(headers((name, value)))
    assert caught.value.reason == "header_value"


IDENTITY_CLAIMS = [
    "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port", "X-Forwarded-Prefix",
    "X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups", "X-Forwarded-Access-Token", "X-Forwarded-Preferred-Username",
    "X-Real-IP", "True-Client-IP", "X-Client-IP", "X-Auth-Request-User", "X-Auth-Request-Email", "X-Auth-Request-Access-Token",
    "Remote-User", "X-Remote-User", "X-Original-URL", "X-Rewrite-URL", "Origin", "Referer",
    # auth proxies and load balancers of every kind (red-team review)
    "X-Forwarded", "Forwarded-For", "Client-IP", "Via", "X-Webauth-User", "X-Goog-Authenticated-User-Email",
    "X-Amzn-Oidc-Identity", "X-Ms-Client-Principal-Name", "Cf-Access-Authenticated-User-Email", "X-Auth-User",
    "X-Authenticated-User", "X-Consumer-Username", "X-Userinfo", "X-Pomerium-Claim-Email", "X-Ssl-Client-Cert",
    "Ssl-Client-Verify", "X-Client-Cert", "X-Envoy-Original-Path", "X-HTTP-Method", "X-Method-Override",
]


def forwarded(client: CIMultiDictProxy[str], extra=()) -> CIMultiDict[str]:
    return upstream_request_headers(client, dropped=never_forwarded(extra), remote="10.0.0.7",
                                    public_url="https://mcp.example.com/mcp", upstream_host="127.0.0.1:3000")


def test_i5_headers_that_claim_identity_or_routing_are_never_forwarded():
    sent = forwarded(headers(*((name, "spoofed") for name in IDENTITY_CLAIMS), ("X-Custom", "kept")))
    for name in IDENTITY_CLAIMS:
        assert sent.get(name) != "spoofed", name
    assert sent["X-Custom"] == "kept"
    # The gateway's own say, from what it knows.
    assert (sent["X-Forwarded-For"], sent["X-Forwarded-Proto"], sent["X-Forwarded-Host"]) == ("10.0.0.7", "https", "mcp.example.com")
    assert sent["Host"] == "127.0.0.1:3000"


def test_i5_only_names_of_letters_digits_and_dashes_are_forwarded():
    sent = forwarded(headers(("X_Forwarded_User", "admin"), ("Remote_User", "admin"), ("X_Custom", "x"), ("Authori_zation", "x"),
                             ("X.Forwarded.User", "admin"), ("Remote.User", "admin"), ("X-Kept", "1")))
    assert [name for name in sent if name.startswith(("X_", "X.", "Remote", "Authori"))] == [] and sent["X-Kept"] == "1"


def test_i5_values_the_upstream_would_read_differently_are_not_forwarded():
    sent = forwarded(headers(("X-Note", "a\xffb"), ("X-Name", "caf\u00e9"), ("X-Plain", "ok")))
    assert "X-Note" not in sent and "X-Name" not in sent and sent["X-Plain"] == "ok"


def test_i5_upstream_strip_headers_are_removed_in_any_letter_case():
    sent = forwarded(headers(("X-Tenant", "other"), ("x-debug-as", "root"), ("X-Kept", "1")), extra=("x-tenant", "X-Debug-As"))
    assert "X-Tenant" not in sent and "X-Debug-As" not in sent and sent["X-Kept"] == "1"


def test_u1_the_client_credentials_and_proof_never_pass():
    sent = forwarded(headers(("Authorization", "Bearer t"), ("Cookie", "c"), ("DPoP", "proof"), ("Proxy-Authorization", "p")))
    assert not {"Authorization", "Cookie", "DPoP", "Proxy-Authorization"} & set(sent)


def test_s1_an_upstream_dpop_nonce_never_reaches_the_client():
    """The client's proofs are checked by the gateway; a nonce the upstream sent would be one it never issued."""
    upstream = CIMultiDictProxy(CIMultiDict([("Content-Type", "application/json"), ("DPoP-Nonce", "upstream-nonce"),
                                             ("dpop-nonce", "again"), ("Mcp-Session-Id", "s1")]))
    kept = client_response_headers(upstream)
    assert "DPoP-Nonce" not in kept and kept["Mcp-Session-Id"] == "s1"


def test_i5_o2_client_baggage_never_reaches_the_upstream():
    """W3C baggage is free-form data the gateway neither parses nor decides: not forwarded (I5)."""
    assert "baggage" in never_forwarded()


def test_config_url_problems_never_show_a_password():
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as refused:
        parse_config({"server": {"public_url": "https://gw.example/mcp"},
                      "upstream": {"url": "ftp://user:hunter2@upstream.internal/mcp"},
                      "auth": {"issuers": [{"issuer": "https://idp.example.com"}]}, "authorization": {"policies": "/nonexistent"}})
    assert "hunter2" not in str(refused.value) and "***@upstream.internal" in str(refused.value)
