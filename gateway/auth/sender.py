"""S1-S3: whether the caller holds what its token is bound to (``cnf``, RFC 7800).

    scheme   token's cnf           needs
    Bearer   none                  nothing more (refused when auth.dpop.required)
    Bearer   jkt                   refused: a DPoP-bound token sent as a bearer token (RFC 9449 §7.2)
    DPoP     jkt                   a valid proof signed by that key (gateway.auth.dpop), jti not seen before
    DPoP     none                  refused: the DPoP scheme is for DPoP-bound tokens (RFC 9449 §7.1)
    either   x5t#S256              the client certificate from a trusted proxy (gateway.auth.mtls, RFC 8705)
    either   anything else         refused: a binding the gateway cannot check is never ignored

``before_token`` runs the proof checks that cost nothing before the token is verified; ``after_token``
runs the binding, the proof's signature and the replay window once the token is known good. JWTs and
introspected tokens alike: ``cnf`` is a claim of the principal either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from multidict import MultiMapping

from gateway.auth.dpop import IAT_FUTURE_SKEW, DpopNonces, DpopProof, DpopRules, expected_htu, read_proof
from gateway.auth.mtls import XFCC_HEADER, ClientCertificates
from gateway.auth.principal import Principal
from gateway.auth.replay import ReplayWindow
from gateway.config import DpopConfig
from gateway.errors import InvalidDpopProof, Unauthenticated
from gateway.limits import principal_key

Scheme = Literal["bearer", "dpop"]
CHECKED_CONFIRMATIONS = frozenset({"jkt", "x5t#S256"})


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the sender checks read from the request (the edge builds it; nothing here touches aiohttp)."""

    method: str
    dpop: tuple[str, ...] = ()  # every DPoP header value
    xfcc: tuple[str, ...] = ()  # every X-Forwarded-Client-Cert header value
    peer: str | None = None  # the TCP peer's address

    @classmethod
    def of(cls, method: str, headers: MultiMapping[str], peer: str | None) -> RequestFacts:
        return cls(method, tuple(headers.getall("DPoP", ())), tuple(headers.getall(XFCC_HEADER, ())), peer)


class SenderConstraints:
    def __init__(self, config: DpopConfig, public_url: str, *, replay: ReplayWindow, certificates: ClientCertificates,
                 nonces: DpopNonces | None = None, clock: Callable[[], float] = time.time):
        self.config = config
        self.rules = DpopRules(algorithms=frozenset(config.algorithms), max_age=config.max_age,
                               htu=expected_htu(public_url), nonces=nonces)
        self.replay = replay
        self.certificates = certificates
        self.nonces = nonces
        self.clock = clock
        self.replay_ttl = config.max_age + 2 * IAT_FUTURE_SKEW  # a proof is acceptable for at most this long

    def before_token(self, scheme: Scheme, token: str, request: RequestFacts) -> DpopProof | None:
        if scheme == "bearer":
            if self.config.required:
                raise Unauthenticated("dpop_required", "Bearer scheme; auth.dpop.required accepts DPoP-bound tokens only")
            return None
        return read_proof(request.dpop, method=request.method, token=token, rules=self.rules, now=self.clock())

    async def after_token(self, principal: Principal, scheme: Scheme, proof: DpopProof | None, request: RequestFacts) -> None:
        cnf = confirmation(principal.claims)
        jkt = cnf.get("jkt")
        if scheme == "bearer" and jkt is not None:
            raise Unauthenticated("dpop_bound_token_as_bearer", "a DPoP-bound token (cnf.jkt) sent with the Bearer scheme")
        if scheme == "dpop" and jkt is None:
            raise Unauthenticated("token_not_dpop_bound", "DPoP scheme with a token that has no cnf.jkt")
        if self.config.required and jkt is None:
            raise Unauthenticated("token_not_dpop_bound", "auth.dpop.required and the token has no cnf.jkt")
        x5t = cnf.get("x5t#S256")
        if x5t is not None:
            self.certificates.confirm(x5t, request.xfcc, request.peer)
        if proof is not None:
            proof.confirm(jkt)
            if not await self.replay.first_use(proof.replay_key(), self.replay_ttl, owner=principal_key(principal)):
                raise InvalidDpopProof("dpop_replayed", "this proof's jti was used before within its window")

    def nonce_header(self) -> str | None:
        """The ``DPoP-Nonce`` every MCP answer carries when auth.dpop.nonce is on (RFC 9449 §8.2, §9)."""
        return None if self.nonces is None else self.nonces.current(self.clock())


def confirmation(claims: Mapping[str, Any]) -> Mapping[str, Any]:
    """The token's ``cnf``: {} when absent; refused when it is not an object or binds by a method the
    gateway cannot check (``jwk``, ``kid``, ``jku``…), since ignoring it would turn it into a bearer token."""
    if "cnf" not in claims:
        return {}
    cnf = claims["cnf"]  # "cnf": null is a binding nobody can check, not the absence of one
    if not isinstance(cnf, dict) or not cnf:
        raise Unauthenticated("cnf_malformed", "cnf is not a non-empty object")
    unknown = set(cnf) - CHECKED_CONFIRMATIONS
    if unknown:
        raise Unauthenticated("cnf_unsupported", f"cnf binds with {sorted(unknown)[:3]}, which this gateway cannot check")
    for name in CHECKED_CONFIRMATIONS & set(cnf):
        if not isinstance(cnf[name], str):  # {"x5t#S256": null} was read as no binding at all
            raise Unauthenticated("cnf_malformed", f"cnf.{name} is not a string")
    return cnf
