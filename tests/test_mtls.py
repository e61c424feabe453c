"""S3: certificate-bound tokens (RFC 8705 §3): ``cnf.x5t#S256`` against the client certificate a trusted
mesh proxy forwards in ``X-Forwarded-Client-Cert`` (Envoy/Istio format)."""

from __future__ import annotations

import base64
import datetime
import hashlib
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.auth.mtls import certificate_thumbprint, parse_xfcc, peer_trusted, parse_networks
from tests.test_dpop import INIT, refusal_reasons


def make_certificate(name: str = "client") -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))


def der_sha256(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def x5t(cert: x509.Certificate) -> str:
    return base64.urlsafe_b64encode(der_sha256(cert)).rstrip(b"=").decode()


def xfcc(cert: x509.Certificate, *, with_cert: bool = True, with_hash: bool = True, hash_of: x509.Certificate | None = None) -> str:
    """What Envoy writes with forward_client_cert_details and set_current_client_cert_details {cert: true}."""
    parts = ["By=spiffe://cluster.local/ns/mcp/sa/gateway"]
    if with_hash:
        parts.append(f"Hash={der_sha256(hash_of or cert).hex()}")
    if with_cert:
        parts.append(f'Cert="{quote(cert.public_bytes(serialization.Encoding.PEM).decode(), safe="")}"')
    parts += ['Subject="CN=client,O=Example; Inc"', "URI=spiffe://cluster.local/ns/mcp/sa/client"]
    return ";".join(parts)


CERT = make_certificate()


def test_s3_xfcc_parser_reads_envoy_format():
    value = 'By=spiffe://a;Hash=ab;Subject="CN=x,O=\\"q\\";y";URI=spiffe://b,By=spiffe://c;Hash=cd;DNS=a.example;DNS=b.example'
    elements = parse_xfcc(value)
    assert len(elements) == 2
    assert elements[0]["subject"] == 'CN=x,O="q";y' and elements[1]["hash"] == "cd"


@pytest.mark.parametrize("value", ['Hash="ab', "Hash", "Hash=a;Hash=b"])
def test_s3_xfcc_parser_refuses_ambiguous_values(value):
    with pytest.raises(ValueError):
        parse_xfcc(value)


def test_s3_thumbprint_from_cert_checked_against_hash():
    assert certificate_thumbprint(parse_xfcc(xfcc(CERT))[0]) == x5t(CERT)
    assert certificate_thumbprint(parse_xfcc(xfcc(CERT, with_cert=False))[0]) == x5t(CERT)
    assert certificate_thumbprint(parse_xfcc(xfcc(CERT, with_hash=False))[0]) == x5t(CERT)
    with pytest.raises(ValueError):
        certificate_thumbprint(parse_xfcc(xfcc(CERT, hash_of=make_certificate()))[0])


@pytest.mark.parametrize("peer, trusted", [
    ("10.1.2.3", True), ("::ffff:10.1.2.3", True), ("127.0.0.1", False), ("fd00::1", True), ("fe80::1%eth0", False),
    (None, False), ("not an address", False),
])
def test_s3_trusted_peers(peer, trusted):
    assert peer_trusted(peer, parse_networks(["10.0.0.0/8", "fd00::/8"])) is trusted


async def call(client, token: str, xfcc_values: list[str]):
    headers = [("Authorization", f"Bearer {token}")] + [("X-Forwarded-Client-Cert", v) for v in xfcc_values]
    return await client.post("/mcp", json=INIT, headers=headers)


TRUSTED = {"auth": {"mtls": {"trusted_proxies": ["127.0.0.1/32"]}}}


async def test_s3_bound_token_with_matching_certificate_from_trusted_peer_passes(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False, **TRUSTED)
    response = await call(client, issuer.mint(cnf={"x5t#S256": x5t(CERT)}), [xfcc(CERT)])
    assert response.status == 200, await response.text()
    forwarded = {name.lower() for name in upstream.received[0].headers}
    assert "x-forwarded-client-cert" not in forwarded and "authorization" not in forwarded


@pytest.mark.parametrize("case, expected", [
    ("mismatch", "mtls_certificate_mismatch"),
    ("missing", "mtls_no_certificate"),
    ("hash disagrees with cert", "mtls_xfcc_malformed"),
    ("two headers", "mtls_xfcc_malformed"),
    ("forged element before the proxy's", "mtls_certificate_mismatch"),
])
async def test_s3_bound_token_refused(upstream, start_gateway, issuer, caplog, case, expected):
    client = await start_gateway(upstream.url, authenticated=False, **TRUSTED)
    other = make_certificate("other")
    values = {
        "mismatch": [xfcc(other)],
        "missing": [],
        "hash disagrees with cert": [xfcc(CERT, hash_of=other)],
        "two headers": [xfcc(CERT), xfcc(CERT)],
        # APPEND_FORWARD: the client's own XFCC comes first, the trusted proxy's element last.
        "forged element before the proxy's": [xfcc(CERT) + "," + xfcc(other)],
    }[case]
    response = await call(client, issuer.mint(cnf={"x5t#S256": x5t(CERT)}), values)
    assert response.status == 401 and 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert expected in refusal_reasons(caplog)
    assert not upstream.received


async def test_s3_xfcc_from_untrusted_peer_refused(upstream, start_gateway, issuer, caplog):
    client = await start_gateway(upstream.url, authenticated=False, auth={"mtls": {"trusted_proxies": ["10.0.0.0/8"]}})
    response = await call(client, issuer.mint(cnf={"x5t#S256": x5t(CERT)}), [xfcc(CERT)])
    assert response.status == 401 and "mtls_untrusted_peer" in refusal_reasons(caplog)
    assert not upstream.received


async def test_s3_without_trusted_proxies_a_certificate_bound_token_is_refused(upstream, start_gateway, issuer, caplog):
    client = await start_gateway(upstream.url, authenticated=False)
    response = await call(client, issuer.mint(cnf={"x5t#S256": x5t(CERT)}), [xfcc(CERT)])
    assert response.status == 401 and "mtls_untrusted_peer" in refusal_reasons(caplog)


async def test_s3_unbound_token_unaffected_and_xfcc_never_forwarded(upstream, start_gateway, issuer):
    client = await start_gateway(upstream.url, authenticated=False, **TRUSTED)
    assert (await call(client, issuer.mint(), [xfcc(CERT)])).status == 200
    assert "x-forwarded-client-cert" not in {name.lower() for name in upstream.received[0].headers}


async def test_s3_metadata_says_certificate_bound_tokens_are_accepted(upstream, start_gateway):
    client = await start_gateway(upstream.url, authenticated=False, **TRUSTED)
    body = await (await client.get("/.well-known/oauth-protected-resource")).json()
    assert body["tls_client_certificate_bound_access_tokens"] is True


def test_s3_config_names_a_bad_proxy_address():
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as problems:
        parse_config({"server": {"public_url": "https://mcp.example.com/mcp"}, "upstream": {"url": "http://127.0.0.1:1/mcp"},
                      "auth": {"issuers": [{"issuer": "https://idp.example.com"}], "mtls": {"trusted_proxies": ["10.0.0.0/33"]}},
                      "authorization": {"policies": "/"}}, source="g.yaml")
    assert "g.yaml: auth.mtls.trusted_proxies[0]: '10.0.0.0/33' is not an IP address or CIDR" in str(problems.value)
