"""R5 over S1-S3: the proof checker, the cnf reader and the XFCC reader answer any input with a definite
refusal (a ``GatewayError``) or a result, never another exception (which would be a 500 and a traceback)."""

from __future__ import annotations

import asyncio
import json
import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.auth.dpop import DpopNonces, DpopRules, expected_htu, read_proof
from gateway.auth.mtls import ClientCertificates, parse_networks
from gateway.auth.principal import principal_from_claims
from gateway.auth.replay import MemoryReplayWindow
from gateway.auth.sender import RequestFacts, SenderConstraints
from gateway.config import DpopConfig
from gateway.errors import GatewayError
from tests.dpop_proofs import DpopKey
from tests.factories import RESOURCE, b64url

PROPERTY = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
KEY = DpopKey.ec()
RULES = DpopRules(algorithms=frozenset({"ES256", "RS256"}), max_age=60.0, htu=expected_htu(RESOURCE),
                  nonces=DpopNonces(b"k" * 32, 60))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
header_members = st.fixed_dictionaries({}, optional={
    "typ": st.sampled_from(["dpop+jwt", "DPoP+JWT", "JWT"]) | json_values,
    "alg": st.sampled_from(["ES256", "RS256", "none", "HS256"]) | json_values,
    "jwk": st.just(KEY.public_jwk()) | st.dictionaries(st.sampled_from(["kty", "crv", "x", "y", "n", "e", "d", "alg"]),
                                                       st.sampled_from(["EC", "RSA", "OKP", "P-256", "AQAB", "\ud800"]) | json_values,
                                                       max_size=5) | json_values,
    "crit": json_values,
})
claim_members = st.fixed_dictionaries({}, optional={
    "jti": st.text(max_size=8) | json_values, "htm": st.sampled_from(["POST", "GET"]) | json_values,
    "htu": st.sampled_from([RESOURCE, "https://MCP.example.com:443/mcp?q", "https://x/\ud800"]) | json_values,
    "iat": st.sampled_from([int(time.time()), 1e308, -1, 10**400, -(10**400)]) | json_values, "ath": json_values,
    "nonce": st.sampled_from([RULES.nonces.current(time.time()), "AAAA"]) | json_values,
})


def compact(header: dict, claims: dict, signature: str) -> str:
    encode = lambda value: b64url(json.dumps(value).encode("utf-8", "surrogatepass"))  # noqa: E731
    return f"{encode(header)}.{encode(claims)}.{signature}"


@PROPERTY
@given(header=header_members, claims=claim_members, signature=st.sampled_from(["", "c2ln", "c2ln=", "+"]),
       extra=st.lists(st.text(max_size=30), max_size=2), method=st.sampled_from(["POST", "GET", "post"]))
def test_r5_proof_checker_refuses_or_reads_never_raises(header, claims, signature, extra, method):
    check_proof_values([compact(header, claims, signature), *extra], method)


def check_proof_values(values: list[str], method: str) -> None:
    """R5, S1: DPoP header values are refused with a GatewayError or read; nothing else (also fuzz/harness.py)."""
    try:
        proof = read_proof(values, method=method, token="t.o.k", rules=RULES, now=time.time())
    except GatewayError:
        return
    try:
        proof.confirm(KEY.jkt)
        proof.replay_key()
    except GatewayError:
        pass


@PROPERTY
@given(cnf=json_values | st.dictionaries(st.sampled_from(["jkt", "x5t#S256", "jwk"]), json_values | st.just("\ud800"), max_size=2),
       scheme=st.sampled_from(["bearer", "dpop"]), xfcc=st.lists(st.text(max_size=60), max_size=2),
       peer=st.sampled_from([None, "127.0.0.1", "::1", "x"]))
@example(cnf={"jkt": "\ud800"}, scheme="dpop", xfcc=[], peer=None)
@example(cnf={"x5t#S256": "\ud800"}, scheme="bearer", xfcc=['Hash=' + "a" * 64], peer="127.0.0.1")
def test_r5_sender_checks_refuse_or_pass_never_raise(cnf, scheme, xfcc, peer):
    check_sender(cnf, scheme, xfcc, peer)


def check_sender(cnf: object, scheme: str, xfcc: list[str], peer: str | None) -> None:
    """R5, S1, S3: the cnf checks and X-Forwarded-Client-Cert refuse or pass, never raise (also fuzzed)."""
    senders = SenderConstraints(DpopConfig(), RESOURCE, replay=MemoryReplayWindow(10),
                                certificates=ClientCertificates(parse_networks(["127.0.0.1/32"])))
    principal = principal_from_claims({"sub": "a", "iss": "i", "cnf": cnf}, token_type="jwt")
    token = "t.o.k"
    facts = RequestFacts("POST", (KEY.proof(RESOURCE, token),), tuple(xfcc), peer)

    async def check():
        proof = senders.before_token(scheme, token, facts)
        await senders.after_token(principal, scheme, proof, facts)

    try:
        asyncio.run(check())
    except GatewayError:
        pass
