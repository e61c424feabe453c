"""S3: certificate-bound access tokens (RFC 8705 §3) behind a mesh that terminates mutual TLS.

The gateway does not see the client's TLS handshake; the proxy in front of it (Envoy, an Istio sidecar or
gateway) does, and forwards what it saw in ``X-Forwarded-Client-Cert`` (XFCC). That header is believed only
on a connection whose TCP peer is in ``auth.mtls.trusted_proxies``: from anyone else it is the client's
own say, and a token bound with ``cnf.x5t#S256`` is refused.

XFCC (Envoy's format): elements separated by ``,``, each a list of ``key=value`` pairs separated by ``;``;
a value may be double-quoted (then ``,``, ``;`` and ``=`` inside are literal and ``\\"`` is a quote).
``Hash`` is the hex SHA-256 of the certificate's DER; ``Cert`` the URL-encoded PEM. The gateway reads the
*last* element only: with ``forward_client_cert_details: APPEND_FORWARD`` that is the one the trusted proxy
added itself (earlier ones came from further away, possibly from the client), and it must read the same
from the right as from the left, so no quote the client left open can reach into it (``proxy_element``). When ``Cert`` is there the
thumbprint is computed from it, and a ``Hash`` beside it must agree.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Sequence
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.errors import Unauthenticated

XFCC_HEADER = "X-Forwarded-Client-Cert"
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[IpNetwork, ...]:
    """``10.0.0.5``, ``10.0.0.0/8``, ``::1``: raises ValueError for anything else."""
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values)


def peer_trusted(peer: str | None, networks: Sequence[IpNetwork]) -> bool:
    if not peer or not networks:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False  # a Unix socket, or nothing at all
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def split_quoted(text: str, separator: str) -> list[str]:
    """Split at ``separator`` outside double quotes; ``\\`` escapes the next character inside quotes."""
    pieces, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif quoted and char == "\\":
            current.append(char)
            escaped = True
        elif char == '"':
            current.append(char)
            quoted = not quoted
        elif char == separator and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise ValueError("unterminated quoted value")
    pieces.append("".join(current))
    return pieces


def _unquote_value(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_xfcc(value: str) -> list[dict[str, str]]:
    """Every element of an XFCC value as {lower-case key: value}. A key twice in one element is refused."""
    elements = []
    for element in split_quoted(value, ","):
        pairs: dict[str, str] = {}
        for pair in split_quoted(element, ";"):
            if not pair.strip():
                continue
            key, sep, raw = pair.partition("=")
            key = key.strip().lower()
            if not sep or not key:
                raise ValueError("a pair without key=value")
            if key in pairs and key not in ("uri", "dns"):  # Envoy repeats URI and DNS for several SANs
                raise ValueError(f"{key} twice in one element")
            pairs[key] = _unquote_value(raw)
        elements.append(pairs)
    return elements


def last_element(value: str) -> str:
    """The text of the last element, read from the right: there, the trusted proxy's own element ends the
    header whatever the client put before it. Inside quotes, a ``"`` after an odd run of ``\\`` is escaped."""
    quoted, index = False, len(value) - 1
    while index >= 0:
        char = value[index]
        if char == '"':
            start = index
            while start > 0 and value[start - 1] == "\\":  # each backslash is counted once: linear
                start -= 1
            if not (quoted and (index - start) % 2):
                quoted = not quoted
        elif char == "," and not quoted:
            return value[index + 1:]
        index -= 1
    if quoted:
        raise ValueError("unterminated quoted value")
    return value


def proxy_element(value: str) -> dict[str, str]:
    """The last element, which must read the same from the left and from the right. A client prefix that
    ends inside an open quote, before a proxy element with an escaped quote in it (a subject such as
    ``CN=a\\"b``), otherwise turns the header into one element whose Hash is the client's."""
    elements = parse_xfcc(value)
    if parse_xfcc(last_element(value)) != elements[-1:]:
        raise ValueError("the last element reads differently from the right: a client prefix reaches into it")
    return elements[-1]


def certificate_thumbprint(element: dict[str, str]) -> str | None:
    """RFC 8705 §3.1 ``x5t#S256`` (base64url SHA-256 of the DER) of the element's certificate, or None."""
    digest = None
    if "cert" in element:
        pem = unquote(element["cert"]).encode()
        digest = hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).digest()
    if "hash" in element:
        if not _HEX_SHA256.fullmatch(element["hash"]):
            raise ValueError("Hash is not a hex SHA-256")
        given = bytes.fromhex(element["hash"])
        if digest is not None and not hmac.compare_digest(given, digest):
            raise ValueError("Hash does not match Cert")
        digest = given
    return None if digest is None else base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class ClientCertificates:
    """The certificate thumbprint of the client of this request, when a trusted proxy vouches for it."""

    def __init__(self, trusted_proxies: Sequence[IpNetwork]):
        self.trusted = tuple(trusted_proxies)

    def confirm(self, bound: str, xfcc: Sequence[str], peer: str | None) -> None:
        """RFC 8705 §3: the certificate the request came with has the thumbprint ``cnf.x5t#S256`` names.
        Any doubt is a 401 ``invalid_token`` (§3: "MUST be rejected ... invalid_token")."""
        if not peer_trusted(peer, self.trusted):
            raise Unauthenticated("mtls_untrusted_peer", f"certificate-bound token from peer {str(peer)[:45]!r}, "
                                                         "not in auth.mtls.trusted_proxies")
        if not xfcc:
            raise Unauthenticated("mtls_no_certificate", f"certificate-bound token without {XFCC_HEADER}")
        if len(xfcc) > 1:
            raise Unauthenticated("mtls_xfcc_malformed", f"{len(xfcc)} {XFCC_HEADER} headers")
        try:
            thumbprint = certificate_thumbprint(proxy_element(xfcc[0]))
        except (ValueError, x509.InvalidVersion) as exc:  # PEM and DER errors are ValueErrors; a bad version is not
            raise Unauthenticated("mtls_xfcc_malformed", f"{XFCC_HEADER}: {str(exc)[:80]}") from None
        if thumbprint is None:
            raise Unauthenticated("mtls_no_certificate", f"{XFCC_HEADER} names no certificate (no Hash, no Cert)")
        if not hmac.compare_digest(thumbprint.encode(), bound.encode("utf-8", "surrogatepass")):
            raise Unauthenticated("mtls_certificate_mismatch", "client certificate is not the one cnf.x5t#S256 names")
