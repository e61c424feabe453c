"""The MCP Python SDK client, through the gateway, against oidc-provider and the SDK's own server.

The client is given nothing but the gateway's URL: it gets the 401, reads ``resource_metadata`` from the
challenge, fetches PRM, then the authorization server's metadata, registers itself (RFC 7591), runs the
authorization code flow with PKCE and ``resource`` (logging in headlessly), and retries with its token.
The upstream records every request's headers; no test may find the client's token there (U1).
"""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from tests.interop.conftest import BROWSER_ORIGIN, assert_token_never_reached_upstream, decoded_claims, interop_gateway_config

POLICIES = """\
@id("everyone-may-list")
permit (principal, action in [Action::"tools/list", Action::"prompts/list", Action::"resources/list"], resource);

@id("everyone-may-discover")
permit (principal, action == Action::"server/discover", resource);

@id("everyone-may-echo-and-add")
permit (principal, action == Action::"tools/call", resource)
when { [Tool::"echo", Tool::"add", Tool::"countdown"].contains(resource) };

@id("admin-scope-may-reset")
permit (principal, action == Action::"tools/call", resource == Tool::"admin_reset")
when { principal.scopes.contains("mcp.admin") };
"""

REDIRECT_URI = "http://localhost:3030/callback"


@pytest.fixture(scope="module")
def gateway(start_gateway_process, authorization_server, recording_upstream, gateway_port, public_url, tmp_path_factory):
    policies = tmp_path_factory.mktemp("policies")
    (policies / "interop.cedar").write_text(POLICIES)
    return start_gateway_process(interop_gateway_config(
        port=gateway_port, public_url=public_url, issuer=authorization_server.issuer,
        upstream_url=recording_upstream.url, policies=policies))


class MemoryTokenStorage:
    def __init__(self) -> None:
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens) -> None:
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info) -> None:
        self.client_info = client_info


class HeadlessBrowser:
    """Stands in for the user's browser: follows the authorization URL until the redirect URI."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []
        self._callback: dict[str, str] = {}

    async def redirect_handler(self, url: str) -> None:
        self.authorizations.append(url)
        # oidc-provider's login cookies are set for 127.0.0.1, which aiohttp ignores unless unsafe=True.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            for _ in range(10):
                async with browser.get(url, allow_redirects=False) as response:
                    location = response.headers.get("Location")
                    if response.status not in (302, 303) or not location:
                        raise AssertionError(f"authorization stopped at {response.status}: {await response.text()}")
                url = urljoin(url, location)
                if url.startswith(REDIRECT_URI):
                    self._callback = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
                    return
        raise AssertionError("too many redirects")

    async def callback_handler(self) -> AuthorizationCodeResult:
        if "code" not in self._callback:
            raise AssertionError(f"the authorization server answered {self._callback}")
        return AuthorizationCodeResult(code=self._callback["code"], state=self._callback.get("state"), iss=self._callback.get("iss"))


async def run_client(url: str, provider: OAuthClientProvider, calls):
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                return await calls(session)


async def test_t_interop_python_sdk_completes_oauth_and_mcp_calls(gateway, authorization_server, recording_upstream, public_url):
    browser = HeadlessBrowser()
    storage = MemoryTokenStorage()
    provider = OAuthClientProvider(
        server_url=public_url,
        client_metadata=OAuthClientMetadata(redirect_uris=[REDIRECT_URI], client_name="interop test"),
        storage=storage,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )

    async def calls(session: ClientSession):
        tools = await session.list_tools()
        echoed = await session.call_tool("echo", {"text": "through the gateway"})
        added = await session.call_tool("add", {"a": 2, "b": 3})
        return tools, echoed, added

    tools, echoed, added = await run_client(public_url, provider, calls)

    # The flow went through discovery, registration, PKCE and the resource indicator.
    assert storage.client_info is not None and storage.client_info.client_id
    [authorization] = browser.authorizations
    query = parse_qs(urlsplit(authorization).query)
    assert query["resource"] == [public_url]
    assert query["code_challenge_method"] == ["S256"]
    token = storage.tokens.access_token
    claims = decoded_claims(token)
    assert claims["aud"] == public_url and claims["iss"] == authorization_server.issuer and claims["sub"] == "alice"

    # Policies filtered the list (admin_reset needs mcp.admin) and allowed the calls.
    assert sorted(t.name for t in tools.tools) == ["add", "countdown", "echo"]
    assert echoed.content[0].text == "through the gateway"
    assert added.content[0].text == "5"
    assert_token_never_reached_upstream(recording_upstream, token)


async def test_t10_interop_python_sdk_steps_up_on_insufficient_scope(gateway, recording_upstream, public_url):
    browser = HeadlessBrowser()
    storage = MemoryTokenStorage()
    provider = OAuthClientProvider(
        server_url=public_url,
        # oidc-provider treats a registered scope as an allow-list: register for every scope the client
        # may be asked for, so the step-up authorization can request mcp.admin.
        client_metadata=OAuthClientMetadata(redirect_uris=[REDIRECT_URI], client_name="step-up test", scope="mcp mcp.admin"),
        storage=storage,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )

    async def calls(session: ClientSession):
        first_scope = storage.tokens.scope
        result = await session.call_tool("admin_reset", {})
        return first_scope, result

    first_scope, result = await run_client(public_url, provider, calls)
    assert first_scope == "mcp"  # the 401 challenge asked for mcp only
    assert result.content[0].text == "reset done"  # after 403 insufficient_scope, a second authorization
    assert len(browser.authorizations) == 2
    assert "mcp.admin" in parse_qs(urlsplit(browser.authorizations[1]).query)["scope"][0].split()
    assert_token_never_reached_upstream(recording_upstream, storage.tokens.access_token)


async def client_credentials(authorization_server, client_id: str, secret: str, resource: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.post(authorization_server.token_endpoint, data={
            "grant_type": "client_credentials", "resource": resource, "scope": "mcp",
        }, headers={"Authorization": aiohttp.encode_basic_auth(client_id, secret)}) as response:
            assert response.status == 200, await response.text()
            return (await response.json())["access_token"]


INITIALIZE = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "interop", "version": "1"}}}


async def mcp_post(url: str, token: str, body: dict) -> tuple[int, str]:
    """Opens a session (initialize) and sends ``body`` in it, as a plain HTTP client would."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=INITIALIZE, headers=headers) as response:
            if response.status != 200 or body["method"] == "initialize":
                return response.status, await response.text()
            session = response.headers["Mcp-Session-Id"]
        async with http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers={**headers, "Mcp-Session-Id": session}):
            pass
        async with http.post(url, json=body, headers={**headers, "Mcp-Session-Id": session}) as response:
            return response.status, await response.text()


async def test_t9_interop_opaque_tokens_go_through_introspection(gateway, authorization_server, recording_upstream, public_url):
    token = await client_credentials(authorization_server, "gateway-test-opaque", "gateway-secret", public_url)
    assert token.count(".") != 2  # opaque
    status, text = await mcp_post(public_url, token, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert status == 200, text
    assert '"echo"' in text
    assert_token_never_reached_upstream(recording_upstream, token)
    assert token not in gateway.log_text()


async def test_t2_interop_client_credentials_jwt_is_accepted(gateway, authorization_server, public_url):
    token = await client_credentials(authorization_server, "gateway-test", "gateway-secret", public_url)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["typ"] == "at+jwt"
    status, text = await mcp_post(public_url, token, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                       "params": {"name": "echo", "arguments": {"text": "cc"}}})
    assert status == 200, text
    assert '"cc"' in text


async def test_t11_interop_gateway_log_has_no_tokens(gateway, authorization_server, public_url):
    token = await client_credentials(authorization_server, "gateway-test", "gateway-secret", public_url)
    await mcp_post(public_url, token, {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "admin_reset"}})
    await mcp_post(public_url, token + "x", {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert token not in gateway.log_text()


# -- client credentials, and both protocol revisions --------------------------------------------------------


def client_credentials_provider(public_url: str, authorization_server):
    from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider

    return ClientCredentialsOAuthProvider(
        public_url, MemoryTokenStorage(), "gateway-test", "gateway-secret",
        scope="mcp", issuer=authorization_server.issuer,
    )


async def run_modal_client(public_url: str, provider, mode: str):
    from mcp import Client

    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        async with Client(streamable_http_client(public_url, http_client=http), mode=mode) as client:
            tools = await client.list_tools()
            echoed = await client.call_tool("echo", {"text": f"mode {mode}"})
            return [t.name for t in tools.tools], echoed.content[0].text


async def test_t2_interop_python_sdk_client_credentials(gateway, authorization_server, recording_upstream, public_url):
    provider = client_credentials_provider(public_url, authorization_server)
    tools, echoed = await run_modal_client(public_url, provider, "legacy")
    assert sorted(tools) == ["add", "countdown", "echo"] and echoed == "mode legacy"
    assert_token_never_reached_upstream(recording_upstream, provider.context.current_tokens.access_token)


@pytest.mark.parametrize(("mode", "revision"), [("legacy", "2025-11-25"), ("2026-07-28", "2026-07-28"), ("auto", "2026-07-28")])
async def test_z6_interop_both_protocol_revisions_pass_through(mode, revision, gateway, authorization_server, recording_upstream, public_url):
    """2025-11-25 (initialize, sessions, GET stream, DELETE) and 2026-07-28 (stateless, Mcp-Method/Mcp-Name)."""
    already = len(recording_upstream.requests())
    provider = client_credentials_provider(public_url, authorization_server)
    tools, echoed = await run_modal_client(public_url, provider, mode)
    assert "echo" in tools and echoed == f"mode {mode}"
    seen = recording_upstream.requests()[already:]
    calls = [r for r in seen if r["method"] == "POST" and "mcp-method" in r["headers"]]
    if revision == "2026-07-28":
        assert calls and all(r["headers"]["mcp-protocol-version"] == ["2026-07-28"] for r in calls)
        assert not any("mcp-session-id" in r["headers"] for r in seen)
        assert {"tools/call"} <= {r["headers"]["mcp-method"][0] for r in calls}
        assert any(r["headers"].get("mcp-name") == ["echo"] for r in calls)
    else:
        assert any("mcp-session-id" in r["headers"] for r in seen)
        assert not calls
    assert_token_never_reached_upstream(recording_upstream, provider.context.current_tokens.access_token)


async def test_i5_interop_a_browser_origin_reaches_the_sdk_server_despite_its_dns_rebinding_protection(
        gateway, authorization_server, recording_upstream, public_url):
    """The SDK server (default transport security, as a loopback sidecar runs it) answers 403 to a browser
    Origin it was not told about; the gateway decided the Origin (E1) and does not forward it (I5)."""
    token = await client_credentials(authorization_server, "gateway-test", "gateway-secret", public_url)
    browser = {"Origin": BROWSER_ORIGIN, "Referer": f"{BROWSER_ORIGIN}/app", "Accept": "application/json, text/event-stream"}
    async with aiohttp.ClientSession() as http:
        async with http.post(recording_upstream.url, json=INITIALIZE, headers=browser) as response:
            assert response.status == 403  # the protection is really on: directly, the browser is refused
        before = len(recording_upstream.requests())
        async with http.post(public_url, json=INITIALIZE, headers={**browser, "Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200, await response.text()
            assert response.headers["Access-Control-Allow-Origin"] == BROWSER_ORIGIN
            assert "Mcp-Session-Id" in response.headers
    forwarded = recording_upstream.requests()[before:]
    assert forwarded and all("origin" not in r["headers"] and "referer" not in r["headers"] for r in forwarded)
