"""D1, D4, T7, T10: every ``WWW-Authenticate`` value the gateway sends is built here.

    missing token       Bearer resource_metadata="…", scope="…"
    bad token           Bearer resource_metadata="…", error="invalid_token", error_description="…"
    too few scopes      Bearer resource_metadata="…", error="insufficient_scope", scope="…", error_description="…"
    step-up (RFC 9470)  Bearer resource_metadata="…", error="insufficient_user_authentication", scope="…",
                        error_description="…", acr_values="…", max_age="…"
    malformed request   Bearer resource_metadata="…", error="invalid_request", error_description="…"

D4: values never contain ``"`` or ``\\`` (real clients read them with a simple regex), and the metadata URL
comes from configuration, never from the request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from gateway.errors import GatewayError, InsufficientScope, InsufficientUserAuthentication, Unauthenticated

PRM_WELL_KNOWN = "/.well-known/oauth-protected-resource"

# RFC 6750 §3: error_description and scope use %x20-21 / %x23-5B / %x5D-7E, i.e. printable ASCII minus " and \.
_UNSAFE = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')

DESCRIPTIONS = {
    "invalid_token": "The access token is invalid or expired",
    "insufficient_scope": "The access token lacks a scope this request needs",
    # RFC 9470 §3's own wording, for a different acr and for a too old auth_time.
    "step_up_acr": "A different authentication level is required",
    "step_up_max_age": "More recent authentication is required",
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


class Challenges:
    """The challenges of one configured resource."""

    def __init__(self, public_url: str, required_scopes: Iterable[str]):
        self.resource_metadata = prm_url(public_url)
        self.required_scopes = tuple(required_scopes)

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
