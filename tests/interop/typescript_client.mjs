// The MCP TypeScript SDK's client (Client + StreamableHTTPClientTransport with an OAuthClientProvider),
// run headlessly against the gateway. Used by test_typescript_sdk.py.
//
//   node typescript_client.mjs GATEWAY_MCP_URL
//       authorization code flow: the SDK discovers PRM and the AS from the 401, registers itself (RFC 7591),
//       builds the authorization URL (PKCE S256, resource, state); this script plays the browser (follows
//       the redirects with a cookie jar until the redirect URI), then transport.finishAuth(code) and reconnects.
//   node typescript_client.mjs GATEWAY_MCP_URL --client-credentials CLIENT_ID CLIENT_SECRET ISSUER
//       the SDK's own ClientCredentialsProvider (client_secret_basic), pinned to ISSUER (expectedIssuer).
//       CC_CLIENT_ID / CC_CLIENT_SECRET / CC_ISSUER in the environment work too.
//
// Then: tools/list, tools/call echo {text: "from typescript"}, tools/call countdown {n: 2} counting progress
// notifications, DELETE of the session. Prints one JSON line on stdout; errors go to stderr with exit code 1.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';
import { LATEST_PROTOCOL_VERSION, SUPPORTED_PROTOCOL_VERSIONS } from '@modelcontextprotocol/sdk/types.js';

const REDIRECT_URI = 'http://localhost:3030/callback';
const SDK_VERSION = (() => {
  try {
    const manifest = new URL('./node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url);
    return JSON.parse(fs.readFileSync(manifest, 'utf8')).version;
  } catch {
    return null;
  }
})();

/** Stands in for the user's browser: GETs the authorization URL and follows redirects, keeping cookies. */
async function followToRedirectUri(authorizationUrl, redirectUri) {
  const jar = new Map(); // origin -> Map(name -> value); oidc-provider's cookies are host-only on 127.0.0.1
  let url = new URL(authorizationUrl);
  const hops = [];
  for (let i = 0; i < 15; i += 1) {
    const cookies = jar.get(url.origin);
    const headers = cookies?.size ? { Cookie: [...cookies].map(([k, v]) => `${k}=${v}`).join('; ') } : {};
    const response = await fetch(url, { redirect: 'manual', headers });
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(';');
      const at = pair.indexOf('=');
      if (at <= 0) continue;
      if (!jar.has(url.origin)) jar.set(url.origin, new Map());
      const name = pair.slice(0, at).trim();
      const value = pair.slice(at + 1).trim();
      // an expired cookie (logout, consumed interaction) is removed
      if (/;\s*expires=Thu, 01 Jan 1970/i.test(line) || /;\s*max-age=0\b/i.test(line)) jar.get(url.origin).delete(name);
      else jar.get(url.origin).set(name, value);
    }
    const location = response.headers.get('location');
    if (![302, 303].includes(response.status) || !location) {
      throw new Error(`authorization stopped at ${response.status} ${url}: ${await response.text()}`);
    }
    await response.body?.cancel();
    hops.push(response.status);
    url = new URL(location, url);
    if (url.href.startsWith(redirectUri)) {
      return { params: Object.fromEntries(url.searchParams), hops };
    }
  }
  throw new Error('too many redirects');
}

/** An OAuthClientProvider kept in memory, with a headless "browser" in redirectToAuthorization. */
class HeadlessAuthorizationCodeProvider {
  constructor() {
    this._tokens = undefined;
    this._clientInformation = undefined;
    this._codeVerifier = undefined;
    this._discovery = undefined;
    this._state = undefined;
    this.authorizationUrls = [];
    this.redirectHops = [];
    this.authorizationCode = undefined;
    this.callbackIssuer = undefined;
  }

  get redirectUrl() { return REDIRECT_URI; }

  get clientMetadata() {
    return {
      client_name: 'typescript sdk interop test',
      redirect_uris: [REDIRECT_URI],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }

  state() {
    this._state = crypto.randomBytes(16).toString('base64url');
    return this._state;
  }

  clientInformation() { return this._clientInformation; }
  saveClientInformation(info) { this._clientInformation = info; }
  tokens() { return this._tokens; }
  saveTokens(tokens) { this._tokens = tokens; }
  saveCodeVerifier(verifier) { this._codeVerifier = verifier; }
  codeVerifier() {
    if (!this._codeVerifier) throw new Error('no code verifier saved');
    return this._codeVerifier;
  }
  saveDiscoveryState(state) { this._discovery = state; }
  discoveryState() { return this._discovery; }

  invalidateCredentials(scope) {
    if (scope === 'all' || scope === 'client') this._clientInformation = undefined;
    if (scope === 'all' || scope === 'tokens') this._tokens = undefined;
    if (scope === 'all' || scope === 'verifier') this._codeVerifier = undefined;
    if (scope === 'all' || scope === 'discovery') this._discovery = undefined;
  }

  async redirectToAuthorization(authorizationUrl) {
    this.authorizationUrls.push(authorizationUrl.href);
    const { params, hops } = await followToRedirectUri(authorizationUrl, REDIRECT_URI);
    this.redirectHops.push(hops);
    if (!params.code) throw new Error(`the authorization server answered ${JSON.stringify(params)}`);
    // The SDK's finishAuth(code) takes the code only: state and iss (RFC 9207) are the application's to check.
    if (params.state !== this._state) throw new Error(`state mismatch: sent ${this._state}, got ${params.state}`);
    const issuer = this._discovery?.authorizationServerMetadata?.issuer;
    if (params.iss !== undefined && issuer !== undefined && params.iss !== issuer) {
      throw new Error(`iss mismatch: expected ${issuer}, got ${params.iss}`);
    }
    this.callbackIssuer = params.iss;
    this.authorizationCode = params.code;
  }
}

function parseArgs(argv) {
  const [url, ...rest] = argv;
  if (!url) throw new Error('usage: typescript_client.mjs GATEWAY_MCP_URL [--client-credentials CLIENT_ID CLIENT_SECRET ISSUER]');
  if (rest[0] === '--client-credentials') {
    const clientId = rest[1] ?? process.env.CC_CLIENT_ID;
    const clientSecret = rest[2] ?? process.env.CC_CLIENT_SECRET;
    const issuer = rest[3] ?? process.env.CC_ISSUER;
    if (!clientId || !clientSecret || !issuer) throw new Error('--client-credentials needs CLIENT_ID CLIENT_SECRET ISSUER');
    return { url: new URL(url), mode: 'client_credentials', clientId, clientSecret, issuer };
  }
  return { url: new URL(url), mode: 'authorization_code' };
}

async function connect(url, provider) {
  const client = new Client({ name: 'typescript-interop', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(url, { authProvider: provider });
  await client.connect(transport);
  return { client, transport };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  let provider;
  let connection;
  let firstAttemptUnauthorized = false;
  if (args.mode === 'client_credentials') {
    provider = new ClientCredentialsProvider({
      clientId: args.clientId,
      clientSecret: args.clientSecret,
      scope: 'mcp',
      expectedIssuer: args.issuer,
    });
    // The transport gets the 401, runs auth() (non-interactive: straight to the token endpoint) and retries.
    connection = await connect(args.url, provider);
  } else {
    provider = new HeadlessAuthorizationCodeProvider();
    try {
      connection = await connect(args.url, provider);
    } catch (error) {
      if (!(error instanceof UnauthorizedError)) throw error;
      firstAttemptUnauthorized = true;
      // The 401 led to discovery, registration and redirectToAuthorization (our headless browser), then the
      // transport threw UnauthorizedError. Exchange the code on that transport, then connect afresh.
      const transport = new StreamableHTTPClientTransport(args.url, { authProvider: provider });
      await transport.finishAuth(provider.authorizationCode);
      connection = await connect(args.url, provider);
    }
  }
  const { client, transport } = connection;

  const tools = await client.listTools();
  const echoed = await client.callTool({ name: 'echo', arguments: { text: 'from typescript' } });
  const progress = [];
  const countdown = await client.callTool({ name: 'countdown', arguments: { n: 2 } }, undefined, {
    onprogress: (p) => progress.push(p),
  });

  // M5: how the SDK reads the gateway's policy denial (HTTP 403 with a JSON-RPC error body, spec Z3).
  let denied = null;
  try {
    await client.getPrompt({ name: 'summarize', arguments: { text: 'denied by policy' } });
  } catch (error) {
    denied = { name: error?.constructor?.name ?? null, code: error?.code ?? null, message: String(error?.message ?? error) };
  }

  let sessionTerminated;
  try {
    await transport.terminateSession();
    sessionTerminated = transport.sessionId === undefined;
  } catch (error) {
    sessionTerminated = `error: ${error.message}`;
  }
  await client.close();

  const tokens = await provider.tokens();
  const result = {
    mode: args.mode,
    sdk_version: SDK_VERSION,
    latest_protocol_version: LATEST_PROTOCOL_VERSION,
    supported_protocol_versions: SUPPORTED_PROTOCOL_VERSIONS,
    negotiated_protocol_version: transport.protocolVersion ?? null,
    server_info: client.getServerVersion() ?? null,
    first_attempt_unauthorized: firstAttemptUnauthorized,
    tools: tools.tools.map((t) => t.name),
    echo: echoed.content?.[0]?.text ?? null,
    echo_is_error: echoed.isError ?? false,
    countdown: countdown.content?.[0]?.text ?? null,
    progress: progress.length,
    progress_values: progress.map((p) => [p.progress, p.total ?? null]),
    session_terminated: sessionTerminated,
    denied,
    access_token: tokens?.access_token ?? null,
    token_scope: tokens?.scope ?? null,
    token_issuer_stamp: tokens?.issuer ?? null,
    client_id: (await provider.clientInformation())?.client_id ?? null,
    authorization_urls: provider.authorizationUrls ?? [],
    redirect_hops: provider.redirectHops ?? [],
    callback_iss: provider.callbackIssuer ?? null,
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

try {
  await main();
  process.exit(0);
} catch (error) {
  process.stderr.write(`typescript_client failed: ${error?.stack || error}\n`);
  process.exit(1);
}
