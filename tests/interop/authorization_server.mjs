// Test-only OAuth 2.x / OIDC authorization server built on oidc-provider v9.
// Start: `node authorization_server.mjs` (configuration from the environment, see the table in tests/interop/README.md). Prints one JSON line on stdout when ready.
// Listens on 127.0.0.1 only. Everything is in memory; keys are generated at start.
import * as http from 'node:http';
import * as crypto from 'node:crypto';

import Provider, { errors } from 'oidc-provider';
import * as jose from 'jose';

// ---------------------------------------------------------------------------
// configuration from environment
// ---------------------------------------------------------------------------
const env = process.env;
const HOST = '127.0.0.1';
const PORT = Number.parseInt(env.PORT ?? '0', 10);
const RESOURCE = env.RESOURCE || 'http://127.0.0.1:9999/mcp';
const SCOPES = (env.SCOPES ?? 'mcp mcp.admin').split(/\s+/).filter(Boolean);
const JWT_ALG = env.JWT_ALG || 'RS256'; // RS256 | ES256 (for RESOURCE and "any" resources)
const OPAQUE_RESOURCE = env.OPAQUE_RESOURCE || ''; // tokens for this resource are opaque
const ES256_RESOURCE = env.ES256_RESOURCE || ''; // tokens for this resource are JWTs signed ES256
const ANY_RESOURCE = (env.ANY_RESOURCE || 'jwt').toLowerCase(); // jwt | opaque | reject
const DEFAULT_RESOURCE = env.DEFAULT_RESOURCE ?? RESOURCE; // '' disables defaulting
const ACCESS_TOKEN_TTL = Number.parseInt(env.ACCESS_TOKEN_TTL ?? '3600', 10);
const PKCE_REQUIRED = !['0', 'false', 'no'].includes(String(env.PKCE_REQUIRED ?? '1').toLowerCase());
const USER_SUB = env.USER_SUB || 'alice';
const USER_CLAIMS = JSON.parse(env.USER_CLAIMS || JSON.stringify({
  groups: ['engineering'],
  email: `${USER_SUB}@example.com`,
  email_verified: true,
  name: 'Alice Example',
}));
// extra users: {"bob": {"groups": ["sales"]}, ...}; select with login_hint=bob on /auth
const USERS = { [USER_SUB]: USER_CLAIMS, ...JSON.parse(env.USERS_JSON || '{}') };
// which user claims are copied into access tokens (comma list, '*' = all)
const AT_CLAIMS = (env.AT_CLAIMS ?? '*').split(',').map((s) => s.trim()).filter(Boolean);
const OPAQUE_CLIENTS = new Set((env.OPAQUE_CLIENTS ?? 'gateway-test-opaque').split(',').map((s) => s.trim()).filter(Boolean));
const LOG = ['1', 'true', 'yes'].includes(String(env.LOG_REQUESTS ?? '').toLowerCase());
// RFC 9470 step-up: the acr values this server "performs" (acr_values_supported). A login records the first
// of the request's acr_values that is one of them, else the first of them; user tokens carry acr and auth_time.
const ACR_VALUES = (env.ACR_VALUES ?? 'pwd mfa').split(/\s+/).filter(Boolean);

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const TT_ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';
const TT_JWT = 'urn:ietf:params:oauth:token-type:jwt';

// resource server registry: url -> { format, alg, scope, audience?, ttl? }
const resources = new Map();
resources.set(RESOURCE, { format: 'jwt', alg: JWT_ALG, scope: SCOPES.join(' ') });
if (OPAQUE_RESOURCE) resources.set(OPAQUE_RESOURCE, { format: 'opaque', scope: SCOPES.join(' ') });
if (ES256_RESOURCE) resources.set(ES256_RESOURCE, { format: 'jwt', alg: 'ES256', scope: SCOPES.join(' ') });
for (const [url, spec] of Object.entries(JSON.parse(env.RESOURCES_JSON || '{}'))) {
  resources.set(url, { format: 'jwt', alg: JWT_ALG, scope: SCOPES.join(' '), ...spec });
}
const allResourceScopes = new Set([...resources.values()].flatMap((r) => (r.scope || '').split(' ').filter(Boolean)));

// ---------------------------------------------------------------------------
// keys: RSA (RS256) + EC P-256 (ES256), fresh per process
// ---------------------------------------------------------------------------
async function makeJwk(alg, opts) {
  const { privateKey } = await jose.generateKeyPair(alg, { extractable: true, ...opts });
  const jwk = await jose.exportJWK(privateKey);
  const thumb = await jose.calculateJwkThumbprint(jwk);
  return { ...jwk, kid: `${alg.toLowerCase()}-${thumb.slice(0, 16)}`, alg, use: 'sig' };
}
const rsaJwk = await makeJwk('RS256', { modulusLength: 2048 });
const ecJwk = await makeJwk('ES256', { crv: 'P-256' });
const privateJwks = { keys: [rsaJwk, ecJwk] };
const publicJwks = {
  keys: privateJwks.keys.map(({ d, p, q, dp, dq, qi, ...pub }) => pub),
};
const localJwks = jose.createLocalJWKSet(publicJwks);

// ---------------------------------------------------------------------------
// clients
// ---------------------------------------------------------------------------
const CC_CLIENT_ID = env.CC_CLIENT_ID || 'gateway-test';
const CC_CLIENT_SECRET = env.CC_CLIENT_SECRET || 'gateway-secret';
const INTROSPECT_CLIENT_ID = env.INTROSPECT_CLIENT_ID || 'gateway-introspect';
const INTROSPECT_CLIENT_SECRET = env.INTROSPECT_CLIENT_SECRET || 'introspect-secret';

const confidentialServiceClient = (client_id, client_secret) => ({
  client_id,
  client_secret,
  grant_types: ['client_credentials', TOKEN_EXCHANGE],
  response_types: [],
  redirect_uris: [],
  // client_secret_basic and client_secret_post are interchangeable in oidc-provider for
  // secret-based clients: the registered method only has to be one of the two.
  token_endpoint_auth_method: 'client_secret_basic',
});

const clients = [
  confidentialServiceClient(CC_CLIENT_ID, CC_CLIENT_SECRET),
  confidentialServiceClient('gateway-test-opaque', CC_CLIENT_SECRET),
  confidentialServiceClient(INTROSPECT_CLIENT_ID, INTROSPECT_CLIENT_SECRET),
  ...JSON.parse(env.CLIENTS_JSON || '[]'),
];

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------
function userAccessTokenClaims(accountId) {
  const claims = USERS[accountId];
  if (!claims) return {};
  if (AT_CLAIMS.includes('*')) return { ...claims };
  return Object.fromEntries(AT_CLAIMS.filter((k) => k in claims).map((k) => [k, claims[k]]));
}

function resourceServerInfo(indicator, client) {
  let spec = resources.get(indicator);
  if (!spec) {
    if (ANY_RESOURCE === 'reject') throw new errors.InvalidTarget(`unknown resource ${indicator}`);
    const u = URL.parse(indicator);
    if (!u || !['http:', 'https:'].includes(u.protocol)) throw new errors.InvalidTarget('resource must be an http(s) URL');
    spec = { format: ANY_RESOURCE === 'opaque' ? 'opaque' : 'jwt', alg: JWT_ALG, scope: SCOPES.join(' ') };
  }
  const format = client && OPAQUE_CLIENTS.has(client.clientId) ? 'opaque' : spec.format;
  const info = {
    scope: spec.scope,
    accessTokenFormat: format,
    accessTokenTTL: spec.ttl ?? ACCESS_TOKEN_TTL,
  };
  if (spec.audience) info.audience = spec.audience;
  if (format === 'jwt') info.jwt = { sign: { alg: spec.alg || JWT_ALG } };
  return info;
}

// ---------------------------------------------------------------------------
// provider configuration
// ---------------------------------------------------------------------------
const configuration = {
  clients,
  jwks: privateJwks,
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  // static scopes: must include the resource scopes so that DCR clients may register with
  // e.g. scope="mcp" (client `scope` metadata is validated against this list)
  scopes: [...new Set(['openid', 'offline_access', 'profile', 'email', 'groups', ...allResourceScopes])],
  claims: {
    openid: ['sub'],
    profile: ['name'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() { return { sub, ...(USERS[sub] || {}) }; },
    };
  },
  clientBasedCORS() { return true; },
  acrValues: ACR_VALUES,
  // only the authorization code flow (no implicit / hybrid)
  responseTypes: ['code'],
  discovery: {
    // oidc-provider only publishes token_endpoint_auth_methods_supported; the same methods apply here
    introspection_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    revocation_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
  },
  // A client's jwks_uri (the gateway's /.well-known/jwks.json, O6) is on 127.0.0.1 here, which oidc-provider's
  // SSRF guard refuses to fetch; everything this test server talks to is loopback by design.
  fetch: (url, options) => { delete options.dispatcher; return globalThis.fetch(url, options); },
  pkce: { required: () => PKCE_REQUIRED },
  ttl: {
    AccessToken: ACCESS_TOKEN_TTL,
    ClientCredentials: ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 24 * 3600,
    Interaction: 600,
    Session: 24 * 3600,
    Grant: 24 * 3600,
    DeviceCode: 600,
    BackchannelAuthenticationRequest: 600,
  },
  // refresh tokens whenever the client is allowed the refresh_token grant (no offline_access needed)
  async issueRefreshToken(ctx, client) { return client.grantTypeAllowed('refresh_token'); },
  async extraTokenClaims(ctx, token) {
    const extra = {};
    if (token.accountId) Object.assign(extra, userAccessTokenClaims(token.accountId));
    // RFC 9470 §6.1: the user authentication behind the token, from the code or refresh token it came from.
    const authn = ctx?.oidc?.entities?.AuthorizationCode ?? ctx?.oidc?.entities?.RefreshToken;
    if (token.accountId && authn?.acr) extra.acr = authn.acr;
    if (token.accountId && authn?.authTime) extra.auth_time = authn.authTime;
    if (token.gty === TOKEN_EXCHANGE && token.clientId) {
      extra.act = { sub: token.clientId };
    }
    return Object.keys(extra).length ? extra : undefined;
  },
  async renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
  interactions: {
    url(ctx, interaction) { return `/interaction/${interaction.uid}`; },
  },
  // A scope in dynamic registration is informational here, not an allow-list: MCP clients register with
  // the scope of the first challenge and later step up (403 insufficient_scope) to more scopes, which
  // oidc-provider would otherwise refuse as "requested scope is not allowed".
  extraClientMetadata: {
    properties: ['scope'],
    validator(ctx, key, value, metadata) {
      if (key === 'scope' && ctx?.oidc?.route === 'registration') delete metadata.scope;
    },
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // S1: DPoP-bound access tokens (cnf.jkt) for clients that send a DPoP proof to the token endpoint
    dPoP: { enabled: true },
    introspection: {
      enabled: true,
      async allowedPolicy(ctx, client, token) {
        // public clients may only introspect their own tokens (library default)
        return !(client.clientAuthMethod === 'none' && token.clientId !== client.clientId);
      },
    },
    revocation: {
      enabled: true,
      async allowedPolicy(ctx, client, token) {
        return token.clientId === client.clientId || client.clientId === INTROSPECT_CLIENT_ID;
      },
    },
    registration: { enabled: true, initialAccessToken: false, issueRegistrationAccessToken: true },
    registrationManagement: { enabled: true, rotateRegistrationAccessToken: false },
    resourceIndicators: {
      enabled: true,
      async defaultResource(ctx, client, oneOf) {
        if (oneOf) return DEFAULT_RESOURCE && oneOf.includes(DEFAULT_RESOURCE) ? DEFAULT_RESOURCE : oneOf;
        return DEFAULT_RESOURCE || undefined;
      },
      async useGrantedResource() { return true; },
      async getResourceServerInfo(ctx, indicator, client) {
        return resourceServerInfo(indicator, client);
      },
    },
  },
};

// the issuer needs the real port (PORT=0 -> OS picks one): bind first, then build the provider;
// requests are only handled once the 'request' listener is attached below.
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(PORT, HOST, resolve);
});
const { port } = server.address();
const issuer = `http://${HOST}:${port}`;

const provider = new Provider(issuer, configuration);

// ---------------------------------------------------------------------------
// RFC 8693 token exchange (custom grant)
// ---------------------------------------------------------------------------
async function loadSubjectToken(value) {
  let isJwt = false;
  try { isJwt = !!jose.decodeProtectedHeader(value); } catch {}
  if (isJwt) {
    try {
      const { payload } = await jose.jwtVerify(value, localJwks, {
        issuer, typ: 'at+jwt', clockTolerance: 5,
      });
      return { sub: payload.sub, scope: payload.scope, clientId: payload.client_id, aud: payload.aud };
    } catch (err) {
      throw new errors.InvalidGrant(`subject_token invalid: ${err.code || err.message}`);
    }
  }
  const token = (await provider.AccessToken.find(value)) || (await provider.ClientCredentials.find(value));
  if (!token?.isValid) throw new errors.InvalidGrant('subject_token invalid or expired');
  return {
    sub: token.accountId || token.clientId, scope: token.scope, clientId: token.clientId, aud: token.aud,
  };
}

async function tokenExchangeHandler(ctx) {
  const { params, client } = ctx.oidc;
  if (!params.subject_token) throw new errors.InvalidRequest('missing required parameter subject_token');
  if (!params.subject_token_type) throw new errors.InvalidRequest('missing required parameter subject_token_type');
  if (![TT_ACCESS_TOKEN, TT_JWT].includes(params.subject_token_type)) {
    throw new errors.InvalidRequest('unsupported subject_token_type');
  }
  if (params.requested_token_type && ![TT_ACCESS_TOKEN, TT_JWT].includes(params.requested_token_type)) {
    throw new errors.InvalidRequest('unsupported requested_token_type');
  }
  if (params.actor_token) throw new errors.InvalidRequest('actor_token is not supported by this test server');

  const subject = await loadSubjectToken(params.subject_token);

  const asList = (v) => (v === undefined ? [] : Array.isArray(v) ? v : [v]);
  const targets = [...asList(params.resource), ...asList(params.audience)];
  let target = targets[0];
  if (targets.length > 1) throw new errors.InvalidTarget('only one resource/audience value is supported');
  if (!target) target = DEFAULT_RESOURCE;
  if (!target) throw new errors.InvalidTarget('resource or audience is required');
  if (!URL.parse(target)) throw new errors.InvalidTarget('resource/audience must be an absolute URI');

  const info = resourceServerInfo(target, client);
  const rs = new provider.ResourceServer(target, info);
  const subjectScopes = new Set((subject.scope || '').split(' ').filter(Boolean));
  let requested;
  if (params.scope) {
    requested = params.scope.split(' ').filter(Boolean);
    const notHeld = requested.filter((s) => !subjectScopes.has(s));
    if (notHeld.length) throw new errors.InvalidScope('requested scope exceeds subject_token scope', notHeld.join(' '));
  } else {
    requested = [...subjectScopes];
  }
  const scope = requested.filter((s) => rs.scopes.has(s)).join(' ') || undefined;

  const token = new provider.AccessToken({
    accountId: subject.sub,
    client,
    scope,
    gty: TOKEN_EXCHANGE,
  });
  token.resourceServer = rs;
  ctx.oidc.entity('AccessToken', token);
  const value = await token.save();

  ctx.body = {
    access_token: value,
    issued_token_type: TT_ACCESS_TOKEN,
    token_type: token.tokenType,
    expires_in: token.expiration,
    scope: token.scope || undefined,
  };
}

provider.registerGrantType(
  TOKEN_EXCHANGE,
  tokenExchangeHandler,
  ['audience', 'resource', 'scope', 'requested_token_type', 'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type'],
  ['audience', 'resource'],
);

// ---------------------------------------------------------------------------
// headless interactions: auto login + auto consent via plain redirects
// ---------------------------------------------------------------------------
provider.use(async (ctx, next) => {
  if (LOG) process.stderr.write(`[oidc] ${ctx.method} ${ctx.url}\n`);
  const m = /^\/interaction\/([^/]+)$/.exec(ctx.path);
  if (!m || ctx.method !== 'GET') return next();

  try {
    await handleInteraction(ctx);
  } catch (err) {
    // e.g. SessionNotFound when the HTTP client did not keep the _interaction cookie
    ctx.status = err.statusCode || 500;
    ctx.type = 'json';
    ctx.body = { error: err.error || 'server_error', error_description: err.error_description || err.message };
    if (ctx.status >= 500) process.stderr.write(`[oidc] interaction error: ${err.stack}\n`);
  }
  return undefined;
});

async function handleInteraction(ctx) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params, session } = details;
  let result;
  if (params.login_hint === 'deny') {
    result = { error: 'access_denied', error_description: 'denied by test server (login_hint=deny)' };
  } else if (prompt.name === 'login') {
    const accountId = params.login_hint || USER_SUB;
    const acr = (params.acr_values || '').split(' ').find((value) => ACR_VALUES.includes(value)) ?? ACR_VALUES[0];
    result = { login: { accountId, acr, amr: acr === 'pwd' ? ['pwd'] : ['pwd', 'otp'], remember: true } };
  } else if (prompt.name === 'consent') {
    let grant;
    if (details.grantId) {
      grant = await provider.Grant.find(details.grantId);
    } else {
      grant = new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    }
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    if (d.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const grantId = await grant.save();
    result = { consent: details.grantId ? {} : { grantId } };
  } else {
    result = { error: 'access_denied', error_description: `unsupported prompt ${prompt.name}` };
  }
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
  ctx.status = 303;
  ctx.redirect(returnTo);
}

provider.on('server_error', (ctx, err) => {
  process.stderr.write(`[oidc] server_error: ${err?.stack || err}\n`);
});

server.on('request', provider.callback());

// ---------------------------------------------------------------------------
// ready + shutdown
// ---------------------------------------------------------------------------
process.stdout.write(`${JSON.stringify({
  issuer,
  port,
  resource: RESOURCE,
  opaque_resource: OPAQUE_RESOURCE || null,
  es256_resource: ES256_RESOURCE || null,
  scopes: SCOPES,
  jwks_kids: publicJwks.keys.map((k) => k.kid),
})}\n`);

let stopping = false;
function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  process.stderr.write(`[oidc] ${signal} received, shutting down\n`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
