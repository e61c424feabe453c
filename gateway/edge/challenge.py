"""D1, D4, T7, T10: every ``WWW-Authenticate`` value the gateway sends is built here.

    missing token       Bearer resource_metadata="…", scope="…"
    bad token           Bearer resource_metadata="…", error="invalid_token", error_description="…"
    too few scopes      Bearer resource_metadata="…", error="insufficient_scope", scope="…", error_description="…"
    step-up (RFC 9470)  Bearer resource_metadata="…", error="insufficient_user_authentication", scope="…",
                        error_description="…", acr_values="…", max_age="…"
    malformed request   Bearer resource_metadata="…", error="invalid_request", error_description="…"

D4: values never contain ``"`` or ``\\`` (real clients read them with a simple regex), and the metadata URL
comes from configuration, never from the request.

S1 (RFC 9449 §7.1, §7.2): a second ``WWW-Authenticate`` field carries ``DPoP algs="ES256 RS256"``. The
``error`` goes on the challenge of the scheme the client used: a bad proof says ``DPoP error=
"invalid_dpop_proof"`` while the ``Bearer`` challenge stays bare. The ``Bearer`` field comes first (clients
that read one header value find ``resource_metadata`` where they always did); with ``auth.dpop.required``
there is no ``Bearer`` challenge and the ``DPoP`` one carries ``resource_metadata``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from gateway.errors import (GatewayError, InsufficientScope, InsufficientUserAuthentication, InvalidDpopProof,
                            Unauthenticated)

PRM_WELL_KNOWN = "/.well-known/oauth-protected-resource"

# RFC 6750 §3: error_description and scope use %x20-21 / %x23-5B / %x5D-7E, i.e. printable ASCII minus " and \.
_UNSAFE = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')

DESCRIPTIONS = {
    "invalid_token": "The access token is invalid or expired",
    "insufficient_scope": "The access token lacks a scope this request needs",
    # RFC 9470 §3's own wording, for a different acr and for a too old auth_time.
    "step_up_acr": "A different authentication level is required",
    "step_up_max_age": "More recent authentication is required",
    "invalid_dpop_proof": "The DPoP proof is invalid",
    "use_dpop_nonce": "Resource server requires nonce in DPoP proof",
}


def prm_url(public_url: str) -> str:
    """RFC 9728 §3.1: ``https://h/a/mcp`` → ``https://h/.well-known/oauth-protected-resource/a/mcp``."""
    parts = urlsplit(public_url)
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, PRM_WELL_KNOWN + path, "", ""))


def _quoted(value: str) -> str:
    return '"' + _UNSAFE.sub("", value) + '"'


def bearer_challenge(
    resource_metadata: str,
    *,
    error: str | None = None,
    scopes: Iterable[str] = (),
    description: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> str:
    params = [f"resource_metadata={_quoted(resource_metadata)}"]
    if error:
        params.append(f"error={_quoted(error)}")
    scope = " ".join(scopes)
    if scope:
        params.append(f"scope={_quoted(scope)}")
    if error and description:
        params.append(f"error_description={_quoted(description)}")
    params.extend(f"{name}={_quoted(value)}" for name, value in extra)
    return "Bearer " + ", ".join(params)


def step_up_challenge(resource_metadata: str, error: InsufficientUserAuthentication) -> str:
    """RFC 9470 §3: ``acr_values`` is one space-separated string, in order of preference; ``max_age`` is
    whole seconds. Both quoted, as in the RFC's own example (``max_age="5"``; RFC 9110 §11.2 makes the
    token and quoted forms equal) and like every other value here (D4: simple regex readers)."""
    extra = []
    if error.acr_values:
        extra.append(("acr_values", " ".join(error.acr_values)))
    if error.max_age is not None:
        extra.append(("max_age", str(error.max_age)))
    kind = "step_up_acr" if error.reason.startswith("step_up_acr") else "step_up_max_age"
    return bearer_challenge(resource_metadata, error="insufficient_user_authentication", scopes=error.scopes,
                            description=DESCRIPTIONS[kind], extra=extra)


def dpop_challenge(algorithms: Iterable[str], *, resource_metadata: str | None = None, error: str | None = None,
                   scopes: Iterable[str] = (), description: str | None = None) -> str:
    """RFC 9449 §7.1: ``DPoP algs="ES256 RS256"`` and, for a refused DPoP request, its ``error``."""
    params = [f"algs={_quoted(' '.join(algorithms))}"]
    if resource_metadata:
        params.append(f"resource_metadata={_quoted(resource_metadata)}")
    if error:
        params.append(f"error={_quoted(error)}")
    scope = " ".join(scopes)
    if scope:
        params.append(f"scope={_quoted(scope)}")
    if error and description:
        params.append(f"error_description={_quoted(description)}")
    return "DPoP " + ", ".join(params)


def _error_of(error: GatewayError, credential_stage: bool) -> str | None:
    if isinstance(error, (InsufficientScope, Unauthenticated)):
        return error.oauth_error
    return "invalid_request" if credential_stage and error.status == 400 else None


class Challenges:
    """The challenges of one configured resource."""

    def __init__(self, public_url: str, required_scopes: Iterable[str], *,
                 dpop_algorithms: Iterable[str] = (), dpop_required: bool = False):
        self.resource_metadata = prm_url(public_url)
        self.required_scopes = tuple(required_scopes)
        self.dpop_algorithms = tuple(dpop_algorithms)
        self.dpop_required = dpop_required and bool(self.dpop_algorithms)

    def all_for_error(self, error: GatewayError, *, credential_stage: bool = False, scheme: str | None = None) -> list[str]:
        """Every ``WWW-Authenticate`` value for ``error``: Bearer (unless DPoP is required), then DPoP."""
        bearer = self.for_error(error, credential_stage=credential_stage)
        if bearer is None or not self.dpop_algorithms:
            return [bearer] if bearer else []
        if isinstance(error, InsufficientUserAuthentication):
            return self._step_up_for(error, scheme)
        dpop_used = scheme == "dpop" or isinstance(error, InvalidDpopProof)
        code = _error_of(error, credential_stage) if (dpop_used or self.dpop_required) else None
        scopes: tuple[str, ...] = ()
        if isinstance(error, InsufficientScope):
            scopes = error.required_scopes if code else ()
        elif code != "invalid_request" and (code or self.dpop_required):
            scopes = self.required_scopes
        dpop = dpop_challenge(
            self.dpop_algorithms, resource_metadata=self.resource_metadata if self.dpop_required else None,
            error=code, scopes=scopes,
            description=error.message if code == "invalid_request" else DESCRIPTIONS.get(code or ""))
        if self.dpop_required:
            return [dpop]
        if dpop_used:
            bearer = bearer_challenge(self.resource_metadata, scopes=self.required_scopes)  # the error is DPoP's
        return [bearer, dpop]

    def _step_up_for(self, error: InsufficientUserAuthentication, scheme: str | None) -> list[str]:
        """A6 with S1: the RFC 9470 error goes on the challenge of the scheme the client used (a DPoP-bound
        token's client must read it on the DPoP challenge), the other scheme's challenge carries none."""
        step_up = step_up_challenge(self.resource_metadata, error)
        algs = f"DPoP algs={_quoted(' '.join(self.dpop_algorithms))}"
        if scheme == "dpop" or self.dpop_required:
            dpop = algs + ", " + step_up.removeprefix("Bearer ")
            return [dpop] if self.dpop_required else [bearer_challenge(self.resource_metadata), dpop]
        return [step_up, algs]

    def for_error(self, error: GatewayError, *, credential_stage: bool = False) -> str | None:
        if isinstance(error, InsufficientUserAuthentication):
            return step_up_challenge(self.resource_metadata, error)
        if isinstance(error, InsufficientScope):
            return bearer_challenge(
                self.resource_metadata, error="insufficient_scope", scopes=error.required_scopes,
                description=DESCRIPTIONS["insufficient_scope"],
            )
        if isinstance(error, Unauthenticated):
            if not error.token_sent:
                # D1: no credentials, no error attribute (RFC 6750 §3.1).
                return bearer_challenge(self.resource_metadata, scopes=self.required_scopes)
            return bearer_challenge(
                self.resource_metadata, error="invalid_token", scopes=self.required_scopes,
                description=DESCRIPTIONS["invalid_token"],
            )
        if credential_stage and error.status == 400:
            return bearer_challenge(self.resource_metadata, error="invalid_request", description=error.message)
        return None
