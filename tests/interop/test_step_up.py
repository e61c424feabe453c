"""A6 (RFC 9470) end to end: a real client steps up against the real authorization server (oidc-provider).

The gateway requires ``acr=mfa`` for the ``add`` tool (``auth.step_up``). The MCP Python SDK client signs in
(the test server records ``acr=pwd`` when no ``acr_values`` are asked for), lists tools (``add`` is listed:
step-up never hides a tool), calls ``add`` and gets ``401`` with ``error="insufficient_user_authentication"``
and ``acr_values="mfa"``. The SDK re-authorizes on any 401; the application's two hooks carry the
challenge's ``acr_values`` (and ``max_age``) into that authorization request: an httpx response hook
reads the challenge, the redirect handler adds its parameters to the authorization URL. The new token
has ``acr=mfa`` and a fresh ``auth_time``, and the SDK's retried call goes through.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata
import pytest

from tests.interop.conftest import assert_token_never_reached_upstream, decoded_claims, free_port, interop_gateway_config, stop
from tests.interop.test_python_sdk import POLICIES, REDIRECT_URI, HeadlessBrowser, MemoryTokenStorage


@pytest.fixture(scope="module")
def step_up_gateway(start_gateway_process, authorization_server, recording_upstream, tmp_path_factory):
    port = free_port()
    public_url = f"http://127.0.0.1:{port}/mcp"
    policies = tmp_path_factory.mktemp("step-up-policies")
    (policies / "interop.cedar").write_text(POLICIES)
    config = interop_gateway_config(port=port, public_url=public_url, issuer=authorization_server.issuer,
                                    upstream_url=recording_upstream.url, policies=policies, name="Step-up interop server")
    config["auth"]["step_up"] = [{"tools": ["add"], "acr_values": ["mfa"], "max_age": "10m"}]
    gateway = start_gateway_process(config, port=port)
    gateway.public_url = public_url
    yield gateway
    stop(gateway.process)


class StepUpHooks:
    """What an application adds to the SDK for RFC 9470: remember the last step-up challenge, and ask the
    authorization server for what it names."""

    def __init__(self, browser: HeadlessBrowser):
        self.browser = browser
        self.challenges: list[str] = []

    async def on_response(self, response: httpx2.Response) -> None:
        header = response.headers.get("WWW-Authenticate", "")
        if response.status_code == 401 and 'error="insufficient_user_authentication"' in header:
            self.challenges.append(header)

    async def redirect_handler(self, url: str) -> None:
        if self.challenges:
            wanted = dict(re.findall(r'(acr_values|max_age)="([^"]*)"', self.challenges[-1]))
            # RFC 9470 §4: acr_values and max_age are OpenID Connect authorization parameters; an OIDC server
            # (oidc-provider, like most) honours them only in an OpenID request, so ask for openid too.
            parts = urlsplit(url)
            query = {key: values[0] for key, values in parse_qs(parts.query).items()}
            if "openid" not in query.get("scope", "").split():
                query["scope"] = " ".join(["openid", *query.get("scope", "").split()])
            url = parts._replace(query=urlencode({**query, **wanted})).geturl()
        await self.browser.redirect_handler(url)


async def test_a6_interop_python_sdk_steps_up_with_acr_values(step_up_gateway, authorization_server, recording_upstream):
    browser = HeadlessBrowser()
    hooks = StepUpHooks(browser)
    storage = MemoryTokenStorage()
    provider = OAuthClientProvider(
        server_url=step_up_gateway.public_url,
        client_metadata=OAuthClientMetadata(redirect_uris=[REDIRECT_URI], client_name="step-up (RFC 9470) test"),
        storage=storage,
        redirect_handler=hooks.redirect_handler,
        callback_handler=browser.callback_handler,
    )
    tokens: list[str] = []

    async with httpx2.AsyncClient(auth=provider, timeout=30, event_hooks={"response": [hooks.on_response]}) as http:
        async with streamable_http_client(step_up_gateway.public_url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                tools = await session.list_tools()
                tokens.append(storage.tokens.access_token)
                added = await session.call_tool("add", {"a": 2, "b": 3})
                tokens.append(storage.tokens.access_token)

    # The first token: acr=pwd. Listing needed no step-up and showed add.
    first, second = (decoded_claims(token) for token in tokens)
    assert first["acr"] == "pwd" and isinstance(first["auth_time"], int)
    assert "add" in [tool.name for tool in tools.tools]
    # The challenge: RFC 9470 §3, with the gateway's metadata URL.
    [challenge] = hooks.challenges
    assert 'error="insufficient_user_authentication"' in challenge and 'acr_values="mfa"' in challenge
    assert 'max_age="600"' in challenge
    assert f'resource_metadata="{step_up_gateway.url}/.well-known/oauth-protected-resource/mcp"' in challenge
    # The second authorization asked for mfa, and got it.
    assert len(browser.authorizations) == 2
    assert parse_qs(urlsplit(browser.authorizations[1]).query)["acr_values"] == ["mfa"]
    assert second["acr"] == "mfa" and second["sub"] == first["sub"]
    assert added.content[0].text == "5"
    assert "step_up_acr_not_accepted" in step_up_gateway.log_text()  # the precise reason, in the log only
    assert_token_never_reached_upstream(recording_upstream, tokens[1])
