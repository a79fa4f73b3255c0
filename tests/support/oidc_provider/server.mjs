// A certified OpenID provider (panva's oidc-provider) configured for the BFF's tests, on loopback.
//
// Everything that differs between tests comes from the command line (the client secret from the
// environment, so it stays off the process list):
//
//   node server.mjs [--port 0] [--issuer http://127.0.0.1:<port>] --client-id ID
//     --redirect-uri URI... --post-logout-redirect-uri URI... --backchannel-logout-uri URI
//     --resource URI --resource-scopes "scope ..." [--access-token-ttl 3600]
//   OIDC_CLIENT_SECRET=...
//
// The issuer has no trailing slash unless --issuer gives one. When the server listens it prints one
// line, `ready <issuer>`; the port is the one it was given (0: any free one).
//
// What it offers: code flow with PKCE required, a confidential client (client_secret_post),
// rotating refresh tokens (a rotated token presented again revokes the whole grant), refresh tokens
// for offline_access, RFC 8707 resource indicators for one API whose access tokens are JWTs, token
// revocation, RP-initiated logout and back-channel logout. Its own pages (login, consent, logout
// confirmation) are plain HTML forms a test HTTP client can fill in; the accounts are test-only.
//
// Test-only endpoint: GET /_test/events lists what the provider did (grants issued and refused,
// grants revoked, back-channel deliveries, sessions ended), in order.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    issuer: { type: 'string' },
    'client-id': { type: 'string' },
    'redirect-uri': { type: 'string', multiple: true },
    'post-logout-redirect-uri': { type: 'string', multiple: true },
    'backchannel-logout-uri': { type: 'string' },
    resource: { type: 'string' },
    'resource-scopes': { type: 'string', default: '' },
    'access-token-ttl': { type: 'string', default: '3600' },
  },
});

function required(name, value) {
  if (!value || (Array.isArray(value) && value.length === 0)) {
    process.stderr.write(`server.mjs: ${name} is required\n`);
    process.exit(2);
  }
  return value;
}

const clientId = required('--client-id', args['client-id']);
const clientSecret = required('OIDC_CLIENT_SECRET', process.env.OIDC_CLIENT_SECRET);
const redirectUris = required('--redirect-uri', args['redirect-uri']);
const resource = required('--resource', args.resource);
const resourceScopes = args['resource-scopes'].split(/\s+/).filter(Boolean);
const accessTokenTtl = Number.parseInt(args['access-token-ttl'], 10);

// Test-only accounts: the login form checks the password; the ID token carries these claims.
const ACCOUNTS = new Map([
  ['alice@example.com', { sub: 'alice', password: 'alice', name: 'Alice Example' }],
  ['bob@example.com', { sub: 'bob', password: 'bob-password', name: 'Bob Example' }],
]);
const ACCOUNTS_BY_SUB = new Map([...ACCOUNTS].map(([email, account]) => [account.sub, { email, ...account }]));

const events = [];

function record(type, details = {}) {
  events.push({ type, at: Date.now() / 1000, ...details });
}

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function html(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${escape(title)}</title></head>`
    + `<body><h1>${escape(title)}</h1>${body}</body></html>`;
}

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-signing-key', alg: 'RS256', use: 'sig' };

const client = {
  client_id: clientId,
  client_secret: clientSecret,
  token_endpoint_auth_method: 'client_secret_post',
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  redirect_uris: redirectUris,
  post_logout_redirect_uris: args['post-logout-redirect-uri'] ?? [],
  id_token_signed_response_alg: 'RS256',
};
if (args['backchannel-logout-uri']) {
  client.backchannel_logout_uri = args['backchannel-logout-uri'];
  client.backchannel_logout_session_required = true;
}

const configuration = {
  clients: [client],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  claims: {
    openid: ['sub', 'amr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  async findAccount(_ctx, sub) {
    const account = ACCOUNTS_BY_SUB.get(sub);
    if (!account) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { sub, email: account.email, email_verified: true, name: account.name };
      },
    };
  },
  pkce: { required: () => true },
  rotateRefreshToken: true,
  // offline_access: oidc-provider follows OpenID Connect Core 11 to the letter and drops it from an
  // authorization request without prompt=consent. The client is confidential and first-party, so the
  // provider honours its offline_access by policy: a refresh token whenever the client may use the
  // grant, one that outlives the provider's session (a revocation or a grant revocation ends it).
  async issueRefreshToken(_ctx, theClient) {
    return theClient.grantTypeAllowed('refresh_token');
  },
  async expiresWithSession() {
    return false;
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: {
    AccessToken: accessTokenTtl,
    AuthorizationCode: 60,
    IdToken: 3600,
    Interaction: 3600,
    RefreshToken: 14 * 24 * 3600,
    Session: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
  },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        // The provider's own form, with its buttons inside it.
        const buttons = '<button type="submit" name="logout" value="yes">Yes, sign me out</button>'
          + '<button type="submit">No, stay signed in</button></form>';
        ctx.body = html('Sign out?', form.replace('</form>', buttons));
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = html('Signed out', '<p>You are signed out.</p>');
      },
    },
    resourceIndicators: {
      enabled: true,
      // No default: an access token is for the API only when the client names it (RFC 8707).
      async defaultResource(_ctx, _client, oneOf) {
        return oneOf;
      },
      async getResourceServerInfo(_ctx, indicator) {
        if (indicator !== resource) throw new errors.InvalidTarget();
        return {
          audience: resource,
          scope: resourceScopes.join(' '),
          accessTokenFormat: 'jwt',
          accessTokenTTL: accessTokenTtl,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
      // The code exchange (which names no resource) yields a token for the resource granted at login.
      async useGrantedResource() {
        return true;
      },
    },
  },
  // oidc-provider's outgoing requests refuse special-use addresses such as loopback (SSRF protection);
  // every party of the tests is on loopback, so the registered back-channel logout URI is let through.
  async fetch(url, options) {
    if (String(url) !== client.backchannel_logout_uri) return globalThis.fetch(url, options);
    const { dispatcher: _ssrfProtection, ...unprotected } = options;
    return globalThis.fetch(url, unprotected);
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = html('Error', `<pre>${escape(JSON.stringify(out))}</pre>`);
  },
};

const server = createServer();
await new Promise((resolve) => server.listen(Number.parseInt(args.port, 10), '127.0.0.1', resolve));
const issuer = args.issuer ?? `http://127.0.0.1:${server.address().port}`;
const provider = new Provider(issuer, configuration);

provider.on('grant.success', (ctx) => {
  const { params } = ctx.oidc;
  record('grant.success', { grant_type: params.grant_type, resource: params.resource ?? null, scope: params.scope ?? null });
});
provider.on('grant.error', (ctx, error) => {
  record('grant.error', {
    grant_type: ctx.oidc?.params?.grant_type ?? null,
    error: error.error ?? error.message,
    error_description: error.error_description ?? null,
    error_detail: error.error_detail ?? null,
  });
});
provider.on('grant.revoked', (ctx, grantId) => record('grant.revoked', { route: ctx?.oidc?.route ?? null, grant: grantId }));
provider.on('revocation.error', (_ctx, error) => record('revocation.error', { error: error.error ?? error.message }));
provider.on('refresh_token.destroyed', () => record('refresh_token.destroyed'));
provider.on('backchannel.success', (_ctx, theClient, sub, sid) => {
  record('backchannel.success', { client_id: theClient.clientId, sub, sid });
});
provider.on('backchannel.error', (_ctx, error, theClient, sub, sid) => {
  record('backchannel.error', { client_id: theClient.clientId, sub, sid, error: error.message });
});
provider.on('end_session.success', () => record('end_session.success'));
provider.on('session.destroyed', (session) => record('session.destroyed', { sub: session.accountId ?? null }));
provider.on('authorization.success', (ctx) => {
  record('authorization.success', { resource: ctx.oidc.params.resource ?? null, scope: ctx.oidc.params.scope ?? null });
});
provider.on('server_error', (_ctx, error) => {
  record('server_error', { error: error.message });
  process.stderr.write(`server error: ${error.stack}\n`);
});

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function respond(res, status, body, type = 'text/html; charset=utf-8') {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

function loginPage(uid, message = '') {
  return html('Sign in', `${message ? `<p class="error">${escape(message)}</p>` : ''}`
    + `<form method="post" action="/interaction/${escape(uid)}/login">`
    + '<input type="email" name="email" value=""><input type="password" name="password" value="">'
    + '<button type="submit">Sign in</button></form>');
}

function consentPage(uid, details) {
  const asked = [
    ...(details.missingOIDCScope ?? []),
    ...Object.entries(details.missingResourceScopes ?? {}).flatMap(([indicator, scopes]) => scopes.map((s) => `${indicator} ${s}`)),
  ];
  return html('Allow access?', `<ul>${asked.map((item) => `<li>${escape(item)}</li>`).join('')}</ul>`
    + `<form method="post" action="/interaction/${escape(uid)}/consent">`
    + '<button type="submit" name="consent" value="allow">Allow</button></form>');
}

async function interaction(req, res, path) {
  const [, , uid, action] = path.split('/');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new errors.InvalidRequest('interaction mismatch');
  const { prompt } = details;
  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') return respond(res, 200, loginPage(uid));
    return respond(res, 200, consentPage(uid, prompt.details));
  }
  if (req.method === 'POST' && action === 'login' && prompt.name === 'login') {
    const form = await readForm(req);
    const account = ACCOUNTS.get(form.get('email') ?? '');
    if (!account || account.password !== form.get('password')) {
      return respond(res, 200, loginPage(uid, 'Wrong email or password.'));
    }
    return provider.interactionFinished(req, res, { login: { accountId: account.sub, amr: ['pwd'] } }, {
      mergeWithLastSubmission: false,
    });
  }
  if (req.method === 'POST' && action === 'consent' && prompt.name === 'consent') {
    await readForm(req);
    const { accountId } = details.session;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId, clientId: details.params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: details.grantId ? {} : { grantId } }, {
      mergeWithLastSubmission: true,
    });
  }
  return respond(res, 400, html('Bad request', '<p>Unexpected interaction step.</p>'));
}

const handle = provider.callback();

server.on('request', async (req, res) => {
  const { pathname } = new URL(req.url, issuer);
  try {
    if (pathname === '/_test/events' && req.method === 'GET') {
      return respond(res, 200, JSON.stringify(events), 'application/json');
    }
    if (pathname.startsWith('/interaction/')) {
      return await interaction(req, res, pathname);
    }
    return handle(req, res);
  } catch (error) {
    process.stderr.write(`interaction error: ${error.stack}\n`);
    return respond(res, 400, html('Error', `<p>${escape(error.message)}</p>`));
  }
});

process.on('SIGTERM', () => process.exit(0));
process.stdout.write(`ready ${issuer}\n`);
