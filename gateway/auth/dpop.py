"""S1: DPoP proofs (RFC 9449) at the resource server. Pure: no I/O, the clock is a value.

A request with ``Authorization: DPoP <token>`` carries one ``DPoP`` header: a JWS the client signed with
the key its token is bound to (``cnf.jkt``, the RFC 7638 thumbprint of that key). The checks are those of
RFC 9449 §4.3, in its order, with one change of order that is about cost, not outcome:

    read_proof (cheap, before the token is verified)
      1  exactly one DPoP header, at most MAX_PROOF_BYTES
      2  one well-formed JWS: strict base64url, strict JSON (the access token's rules, gateway.auth.jwt)
      3  the required members: typ, alg, jwk; jti, htm, htu, iat (and ath, nonce)
      4  typ is dpop+jwt
      5  alg is asymmetric and in auth.dpop.algorithms (none and HS* never reach a key)
      7  jwk is a public key of a kind that fits alg, within size bounds, with no private member
      8  htm is the request's method
      9  htu is server.public_url (query and fragment ignored; scheme, host and default port normalised)
     10  nonce, when auth.dpop.nonce: one this gateway (or a replica with the same key) issued lately
     11  iat within auth.dpop.max_age in the past and IAT_FUTURE_SKEW in the future
     12a ath is base64url(SHA-256(access token))
    DpopProof.confirm (after the token is verified)
     12b the jwk's thumbprint equals the token's cnf.jkt
      6  the signature verifies with that jwk (PyJWT, with the one algorithm)
    then the jti is recorded in the replay window (gateway.auth.replay): a second use is refused.

Why the signature comes last: a proof's key is the client's choice, so verifying it first would let anyone
make the gateway check one signature per request for free, before the token had shown anything. Here a
signature is only checked for a key that a valid token is bound to, and a jti only enters the replay window
once that signature held, so nobody without a bound token and its key can fill the window.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
from jwt.api_jwk import PyJWK

from gateway.auth.jwt import _compact_problem, _strict_base64url, _strict_json_object, canonical_url
from gateway.errors import InvalidDpopProof, UseDpopNonce

MAX_PROOF_BYTES = 4096  # an RS256 proof with a 4096-bit key is about 2,100 bytes
MAX_JTI_CHARS = 256
IAT_FUTURE_SKEW = 5.0  # seconds a client's clock may run ahead of ours
PROOF_TYPES = frozenset({"dpop+jwt", "application/dpop+jwt"})  # RFC 9449 §4.2; RFC 7515 §4.1.9 prefix
# RFC 7517 §7, RFC 7518 §6.2.2, §6.3.2, §6.4: members that only a private or symmetric key has.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# RFC 7638 §3.2: the required members of each key type, in lexicographic order; RFC 8037 §2 for OKP.
THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
_CURVE_OF = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
RSA_BITS = (2048, 4096)  # a larger modulus or exponent makes every verification cost more
MAX_RSA_EXPONENT = 2**32
MAX_IAT = 2**53 - 1  # I-JSON's largest exact integer; NaN and the infinities fail the range test too


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def access_token_hash(token: str) -> str:
    """RFC 9449 §4.2 ``ath``: base64url of the SHA-256 of the token's ASCII bytes."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, as JSON without whitespace; base64url."""
    members = THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None or not all(isinstance(jwk.get(name), str) for name in members):
        raise ValueError("not a public key with the members RFC 7638 needs")
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"), ensure_ascii=False)
    return b64url(hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).digest())


def expected_htu(public_url: str) -> str:
    """RFC 9449 §4.3 (9): the URI a proof names, without query and fragment, in canonical form."""
    canonical = canonical_url(public_url)
    if canonical is None:
        raise ValueError(f"server.public_url {public_url[:80]!r} has no canonical form")
    parts = urlsplit(canonical)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def htu_matches(htu: str, expected: str) -> bool:
    """RFC 3986 §6.2.2.1 and §6.2.3: scheme and host case and the default port, nothing more (no
    percent-decoding, no dot segments): a value with another reading never matches (I6)."""
    canonical = canonical_url(htu)
    if canonical is None or not canonical.startswith(("http://", "https://")):
        return False
    parts = urlsplit(canonical)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")) == expected


@dataclass(frozen=True, slots=True)
class DpopRules:
    """What proofs sent to this resource must satisfy (from auth.dpop and server.public_url)."""

    algorithms: frozenset[str]
    max_age: float
    htu: str  # expected_htu(server.public_url)
    nonces: DpopNonces | None = None  # auth.dpop.nonce


class DpopNonces:
    """S1, RFC 9449 §9: stateless server nonces. A nonce is a time step and an HMAC of it under a key that
    replicas share (derived from server.session_key_file), so any replica accepts any replica's nonce.

    A nonce is good during its step and the next one: between ``step`` and twice that long.
    """

    VERSION = b"dpop-nonce/1"

    def __init__(self, key: bytes, step: float):
        self._key = hmac.new(key, self.VERSION, hashlib.sha256).digest()  # never the session key itself
        self.step = max(1.0, step)
        self._current: tuple[int, str] = (-1, "")

    def _make(self, counter: int) -> str:
        packed = struct.pack(">Q", counter)
        return b64url(packed + hmac.new(self._key, packed, hashlib.sha256).digest()[:16])

    def current(self, now: float) -> str:
        counter = int(now // self.step)
        if self._current[0] != counter:
            self._current = (counter, self._make(counter))
        return self._current[1]

    def valid(self, nonce: str, now: float) -> bool:
        data = _strict_base64url(nonce) if len(nonce) <= 64 else None
        if data is None or len(data) != 24:
            return False
        counter = struct.unpack(">Q", data[:8])[0]
        if counter not in (int(now // self.step), int(now // self.step) - 1):
            return False
        return hmac.compare_digest(nonce, self._make(counter))


@dataclass(frozen=True, slots=True)
class DpopProof:
    """A proof that passed every check that needs no key: what ``confirm`` and the replay window need."""

    proof: str = field(repr=False)
    alg: str
    key: Any = field(repr=False)  # a cryptography public key
    thumbprint: str
    jti: str
    iat: float

    def confirm(self, bound_jkt: Any) -> None:
        """RFC 9449 §4.3 (12b) then (6): the token's ``cnf.jkt`` names this proof's key, and the proof
        was signed with it."""
        if not isinstance(bound_jkt, str) or not hmac.compare_digest(_utf8(bound_jkt), self.thumbprint.encode()):
            raise InvalidDpopProof("dpop_key_mismatch", "the proof's jwk is not the key cnf.jkt names",
                                   oauth_error="invalid_token")
        try:
            jwt.api_jws.PyJWS().decode_complete(self.proof, self.key, algorithms=[self.alg])
        except jwt.InvalidSignatureError as exc:
            raise InvalidDpopProof("dpop_bad_signature", "proof signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise InvalidDpopProof("dpop_bad_signature", f"{type(exc).__name__}") from exc

    def replay_key(self) -> bytes:
        """The replay window's key: the key and jti together, hashed (a bounded size, never the jti itself)."""
        return hashlib.sha256(_utf8(f"{self.thumbprint}\x00{self.jti}")).digest()


def _utf8(text: str) -> bytes:
    """JSON may carry lone surrogates ("\\ud800"); they are bytes like any other here, never an exception."""
    return text.encode("utf-8", "surrogatepass")


def _refuse(reason: str, detail: str) -> InvalidDpopProof:
    return InvalidDpopProof(reason, detail)


def read_proof(values: Sequence[str], *, method: str, token: str, rules: DpopRules, now: float) -> DpopProof:
    """RFC 9449 §4.3 (1)-(5), (7)-(12a): everything but the key binding and the signature."""
    if not values:
        raise _refuse("dpop_proof_missing", "DPoP scheme without a DPoP header")
    if len(values) > 1:
        raise _refuse("dpop_proof_multiple", f"{len(values)} DPoP headers")
    proof = values[0].strip()
    if len(proof) > MAX_PROOF_BYTES:
        raise _refuse("dpop_proof_too_large", f"{len(proof)} bytes > {MAX_PROOF_BYTES}")
    header, claims = _read_jws(proof)
    alg = _check_header(header, rules)  # alg none is refused here, by name
    if proof.endswith("."):
        raise _refuse("dpop_proof_malformed", "no signature")  # an unsecured JWS is never a proof
    key, thumbprint = _read_jwk(header.get("jwk"), alg)
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
        raise _refuse("dpop_claim_malformed", f"jti must be a string of 1 to {MAX_JTI_CHARS} characters")
    if claims.get("htm") != method:
        raise _refuse("dpop_wrong_htm", f"htm {str(claims.get('htm'))[:16]!r} is not {method}")
    htu = claims.get("htu")
    if not isinstance(htu, str) or not htu_matches(htu, rules.htu):
        raise _refuse("dpop_wrong_htu", f"htu {str(htu)[:100]!r} is not {rules.htu}")
    if rules.nonces is not None:
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not rules.nonces.valid(nonce, now):
            raise UseDpopNonce("dpop_nonce_missing" if nonce is None else "dpop_nonce_stale",
                               "no nonce in the proof" if nonce is None else "nonce not issued here lately")
    iat = claims.get("iat")
    # A range test, not math.isfinite: that raises OverflowError for an int like 10**400 (a 500, R5).
    if isinstance(iat, bool) or not isinstance(iat, (int, float)) or not -MAX_IAT <= iat <= MAX_IAT:
        raise _refuse("dpop_claim_malformed", "iat is not a number of seconds")
    if iat < now - rules.max_age:
        raise _refuse("dpop_proof_stale", f"iat is {now - iat:.0f}s old (auth.dpop.max_age {rules.max_age:g}s)")
    if iat > now + IAT_FUTURE_SKEW:
        raise _refuse("dpop_proof_in_future", f"iat is {iat - now:.0f}s in the future")
    ath = claims.get("ath")
    if not isinstance(ath, str) or not hmac.compare_digest(_utf8(ath), access_token_hash(token).encode()):
        raise _refuse("dpop_wrong_ath", "ath is not the hash of this access token" if ath else "no ath")
    return DpopProof(proof=proof, alg=alg, key=key, thumbprint=thumbprint, jti=jti, iat=float(iat))


def _read_jws(proof: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(2): the compact serialization with the access token's strict rules; both parts JSON objects."""
    parts = proof.split(".")
    if len(parts) != 3:
        raise _refuse("dpop_proof_malformed", f"{len(parts)} dot-separated parts, not 3")
    header, problem = _compact_problem(parts)
    if header is None:
        raise _refuse("dpop_proof_malformed", problem)
    claims, problem = _strict_json_object(_strict_base64url(parts[1]) or b"")
    if claims is None:
        raise _refuse("dpop_proof_malformed", f"payload {problem}")
    return header, claims


def _check_header(header: Mapping[str, Any], rules: DpopRules) -> str:
    """(3)-(5) on the JOSE header. Returns the algorithm."""
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in PROOF_TYPES:
        raise _refuse("dpop_wrong_type", f"typ {str(typ)[:30]!r} is not dpop+jwt")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in rules.algorithms:
        raise _refuse("dpop_alg_not_allowed", f"alg {str(alg)[:20]!r} not in auth.dpop.algorithms")
    if "crit" in header:
        raise _refuse("dpop_crit_unsupported", "crit header present")  # RFC 7515 §4.1.11
    return alg


def _read_jwk(jwk: Any, alg: str) -> tuple[Any, str]:
    """(7): a public key whose type fits ``alg``, and its thumbprint. No private member is ever read."""
    if not isinstance(jwk, dict):
        raise _refuse("dpop_jwk_malformed", "no jwk object in the header")
    private = PRIVATE_MEMBERS & set(jwk)
    if private:
        raise _refuse("dpop_jwk_private", f"jwk carries private or symmetric key members {sorted(private)}")
    kty = jwk.get("kty")
    fits = (kty == "RSA" and alg[:2] in ("RS", "PS")) or (kty == "EC" and jwk.get("crv") == _CURVE_OF.get(alg)) \
        or (kty == "OKP" and alg == "EdDSA" and jwk.get("crv") in ("Ed25519", "Ed448"))
    if not fits:
        raise _refuse("dpop_jwk_wrong_type", f"a {str(kty)[:10]!r} key does not fit {alg}")
    if "alg" in jwk and jwk["alg"] != alg:
        raise _refuse("dpop_jwk_wrong_type", "the jwk's own alg differs from the header's")
    try:
        thumbprint = jwk_thumbprint(jwk)
        key = PyJWK(jwk, algorithm=alg).key
    except (ValueError, TypeError, KeyError, jwt.PyJWKError, jwt.InvalidKeyError) as exc:
        raise _refuse("dpop_jwk_malformed", f"jwk is not a usable public key: {type(exc).__name__}") from exc
    if kty == "RSA":
        numbers = key.public_numbers()
        if not RSA_BITS[0] <= numbers.n.bit_length() <= RSA_BITS[1] or numbers.e > MAX_RSA_EXPONENT:
            raise _refuse("dpop_jwk_malformed", f"RSA key of {numbers.n.bit_length()} bits outside {RSA_BITS}")
    return key, thumbprint
