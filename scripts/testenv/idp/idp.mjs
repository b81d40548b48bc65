// TEST ONLY. A stand-in for Keycloak in authsvc's integration tests. Never deploy it: users,
// passwords and client secrets come from a plain JSON file and all state lives in memory.
//
// Keycloak itself is not installable from the registries the tests may use, so this wraps
// panva's oidc-provider (OpenID certified) and makes it look like one Keycloak realm from the
// outside, which is the only side authsvc sees:
//   * issuer http://HOST:PORT/realms/REALM and Keycloak's endpoint paths
//     (/protocol/openid-connect/{auth,token,certs,userinfo,logout,token/introspect,revoke});
//   * RS256 JWT access tokens (header typ "JWT" and a kid) carrying Keycloak's claims:
//     realm_access.roles, resource_access.<client>.roles, groups, preferred_username, email,
//     email_verified, name, azp, and aud as a list;
//   * grants: authorization_code (+ PKCE S256) behind a login page with Keycloak's element ids,
//     refresh_token, client_credentials (service-account-<client>), and password (Keycloak's
//     "direct access grants"), plus RP-initiated logout.
//
// Usage: node idp.mjs [realm.json]
// Environment overrides (so a test fixture can choose): IDP_REALM_FILE, IDP_HOST, IDP_PORT,
// IDP_KEY_FILE (persist the signing key so the kid survives restarts), IDP_DEBUG=1.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

import Provider, { errors } from 'oidc-provider';

// ---------------------------------------------------------------- realm settings

const realmFile = process.argv[2] || process.env.IDP_REALM_FILE
  || path.join(path.dirname(new URL(import.meta.url).pathname), 'realm.json');
const realm = JSON.parse(fs.readFileSync(realmFile, 'utf8'));

const host = process.env.IDP_HOST || realm.host || '127.0.0.1';
const port = Number(process.env.IDP_PORT || realm.port || 18880);
const keyFile = process.env.IDP_KEY_FILE || realm.keyFile || '';
const realmName = realm.realm || 'test';
const realmPath = `/realms/${realmName}`;
const issuer = `http://${host}:${port}${realmPath}`;
const oidcPath = '/protocol/openid-connect';
const accessTokenTtl = realm.accessTokenLifespan || 300;
const sessionTtl = realm.ssoSessionMaxLifespan || 3600;
const debug = Boolean(process.env.IDP_DEBUG);

// Every access token is minted for this one internal resource indicator: oidc-provider only
// issues JWT access tokens for a resource server, and Keycloak always issues JWTs.
const tokenResource = 'urn:authsvc-test-idp:access-token';
const supportedScopes = ['openid', 'offline_access', 'profile', 'email', 'roles', 'groups', 'web-origins'];

// ---------------------------------------------------------------- signing key

function rsaThumbprint(jwk) {
  // RFC 7638: a kid derived from the key itself is stable for as long as the key is.
  const canonical = JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n });
  return crypto.createHash('sha256').update(canonical).digest('base64url');
}

function loadSigningKey() {
  if (keyFile && fs.existsSync(keyFile)) {
    return JSON.parse(fs.readFileSync(keyFile, 'utf8'));
  }
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  Object.assign(jwk, { kid: rsaThumbprint(jwk), alg: 'RS256', use: 'sig' });
  if (keyFile) {
    // Write then rename, so a concurrent reader never sees half a key.
    const scratch = `${keyFile}.${process.pid}.tmp`;
    fs.writeFileSync(scratch, JSON.stringify(jwk), { mode: 0o600 });
    fs.renameSync(scratch, keyFile);
  }
  return jwk;
}

const signingJwk = loadSigningKey();
const verifyKey = crypto.createPublicKey({ key: signingJwk, format: 'jwk' });

// Our own userinfo and introspection endpoints need to read the JWTs we issued; oidc-provider
// refuses to do either for structured tokens.
function readOwnJwt(token) {
  const parts = String(token || '').split('.');
  if (parts.length !== 3) return null;
  try {
    const header = JSON.parse(Buffer.from(parts[0], 'base64url'));
    if (header.alg !== 'RS256' || header.kid !== signingJwk.kid) return null;
    const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
    if (!crypto.verify('sha256', signed, verifyKey, Buffer.from(parts[2], 'base64url'))) return null;
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
    const now = Math.floor(Date.now() / 1000);
    if (claims.iss !== issuer || typeof claims.exp !== 'number' || claims.exp <= now) return null;
    return claims;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- users and clients

function stableUuid(label) {
  // Keycloak subjects are UUIDs; derive them from the name so they survive restarts.
  const hex = crypto.createHash('sha256').update(`${realmName}/${label}`).digest('hex');
  const variant = ((parseInt(hex[16], 16) & 0x3) | 0x8).toString(16);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-${variant}${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

const clientsById = new Map((realm.clients || []).map((c) => [c.clientId, c]));
const accountsById = new Map();
const accountsByName = new Map();

function addAccount(account) {
  accountsById.set(account.id, account);
  accountsByName.set(account.username.toLowerCase(), account);
}

for (const u of realm.users || []) {
  addAccount({ enabled: true, ...u, id: u.id || stableUuid(`user:${u.username}`) });
}
for (const c of clientsById.values()) {
  if (!c.serviceAccountsEnabled) continue;
  const username = `service-account-${c.clientId}`;
  addAccount({
    id: stableUuid(`user:${username}`),
    username,
    enabled: true,
    realmRoles: c.serviceAccount?.realmRoles || [],
    clientRoles: c.serviceAccount?.clientRoles || {},
    groups: c.serviceAccount?.groups || [],
    serviceAccountClientId: c.clientId,
  });
}

function findByLogin(login) {
  const key = String(login || '').toLowerCase();
  const byName = accountsByName.get(key);
  if (byName) return byName;
  return [...accountsById.values()].find((a) => a.email && a.email.toLowerCase() === key);
}

// The result of a username/password check, worded the way Keycloak words it.
function checkPassword(login, password) {
  const account = findByLogin(login);
  if (!account || account.serviceAccountClientId || account.password !== password) {
    return { error: 'Invalid user credentials' };
  }
  if (!account.enabled) return { error: 'Account disabled' };
  return { account };
}

function keycloakClaims(account) {
  const realmRoles = [...new Set([...(realm.defaultRoles || []), ...(account.realmRoles || [])])];
  const resourceAccess = {};
  for (const [clientId, roles] of Object.entries(account.clientRoles || {})) {
    if (roles.length) resourceAccess[clientId] = { roles: [...roles] };
  }
  const claims = {
    preferred_username: account.username,
    realm_access: { roles: realmRoles },
    resource_access: resourceAccess,
    groups: [...(account.groups || [])],
  };
  if (account.email) {
    claims.email = account.email;
    claims.email_verified = account.emailVerified ?? true;
  }
  const fullName = [account.firstName, account.lastName].filter(Boolean).join(' ');
  if (account.firstName) claims.given_name = account.firstName;
  if (account.lastName) claims.family_name = account.lastName;
  if (fullName) claims.name = fullName;
  if (account.serviceAccountClientId) claims.client_id = account.serviceAccountClientId;
  return claims;
}

// Keycloak puts every client the token carries roles for into aud, plus whatever an audience
// mapper on the requesting client adds (realm.json: clients[].audience).
function audienceFor(clientId, resourceAccess) {
  const mapped = clientsById.get(clientId)?.audience || [];
  return [...new Set([...mapped, ...Object.keys(resourceAccess || {})])];
}

// Keycloak accepts a trailing "*" in redirect URIs; this one accepts "*" anywhere, so tests can
// register http://127.0.0.1:*/* without knowing which free port their app will get.
function globMatches(patterns, value) {
  return (patterns || []).some((pattern) => {
    const regex = pattern.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*');
    return new RegExp(`^${regex}$`).test(String(value));
  });
}

function concreteUris(patterns) {
  // oidc-provider validates registered URIs, so wildcard patterns stay out of its metadata and
  // are matched by the redirect checks patched below.
  const concrete = (patterns || []).filter((p) => !p.includes('*'));
  return concrete.length ? concrete : ['http://127.0.0.1/wildcard-redirects-only'];
}

function providerClient(c) {
  const grantTypes = [];
  if (c.standardFlowEnabled ?? true) grantTypes.push('authorization_code', 'refresh_token');
  if (c.directAccessGrantsEnabled) grantTypes.push('password', 'refresh_token');
  if (c.serviceAccountsEnabled && !c.publicClient) grantTypes.push('client_credentials');
  const authorizationCode = grantTypes.includes('authorization_code');
  return {
    client_id: c.clientId,
    ...(c.publicClient
      ? { token_endpoint_auth_method: 'none' }
      : { client_secret: c.secret, token_endpoint_auth_method: 'client_secret_basic' }),
    grant_types: [...new Set(grantTypes)],
    response_types: authorizationCode ? ['code'] : [],
    redirect_uris: authorizationCode ? concreteUris(c.redirectUris) : [],
    post_logout_redirect_uris: (c.postLogoutRedirectUris || []).filter((p) => !p.includes('*')),
    scope: supportedScopes.join(' '),
  };
}

// ---------------------------------------------------------------- HTML pages

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);

function pageShell(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body><div id="kc-header">${escapeHtml(realm.displayName || realmName)}</div>
<div id="kc-content">${body}</div></body></html>`;
}

function loginPage(action, { username = '', error = '' } = {}) {
  // Element ids copied from Keycloak's login theme, so browser tests written against this page
  // also drive a real Keycloak.
  const errorBlock = error
    ? `<span id="input-error" class="kc-feedback-text" aria-live="polite">${escapeHtml(error)}</span>`
    : '';
  return pageShell(`Sign in to ${realmName}`, `
<h1 id="kc-page-title">Sign in to your account</h1>
<form id="kc-form-login" action="${escapeHtml(action)}" method="post">
  <label for="username">Username or email</label>
  <input id="username" name="username" type="text" value="${escapeHtml(username)}" autofocus autocomplete="username">
  <label for="password">Password</label>
  <input id="password" name="password" type="password" autocomplete="current-password">
  ${errorBlock}
  <input id="kc-login" name="login" type="submit" value="Sign In">
</form>`);
}

function errorPage(out) {
  return pageShell('Error', `
<h1 id="kc-page-title">We are sorry...</h1>
<div id="kc-error-message"><p class="instruction">${escapeHtml(out.error_description || out.error)}</p>
<p id="kc-error-code">${escapeHtml(out.error)}</p></div>`);
}

// ---------------------------------------------------------------- the provider

const resourceServerInfo = (client) => ({
  scope: supportedScopes.join(' '),
  // oidc-provider insists on one string here; the JWT customizer below widens it to a list.
  audience: client ? client.clientId : 'account',
  accessTokenTTL: accessTokenTtl,
  accessTokenFormat: 'jwt',
  jwt: { sign: { alg: 'RS256' } },
});

const profileClaims = ['preferred_username', 'name', 'given_name', 'family_name'];
const emailClaims = ['email', 'email_verified'];
const authzClaims = ['realm_access', 'resource_access', 'groups', 'client_id'];

const provider = new Provider(issuer, {
  clients: [...clientsById.values()].map(providerClient),
  jwks: { keys: [signingJwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  routes: {
    authorization: `${oidcPath}/auth`,
    token: `${oidcPath}/token`,
    jwks: `${oidcPath}/certs`,
    userinfo: `${oidcPath}/userinfo`,
    introspection: `${oidcPath}/token/introspect`,
    revocation: `${oidcPath}/revoke`,
    end_session: `${oidcPath}/logout`,
  },
  scopes: supportedScopes,
  responseTypes: ['code'],
  // Keycloak's default client scopes add profile, email, role and group claims whether or not
  // the client asked for them; hanging them all off "openid" gives the same ID tokens.
  claims: {
    openid: ['sub', ...profileClaims, ...emailClaims, ...authzClaims],
    profile: profileClaims,
    email: emailClaims,
  },
  conformIdTokenClaims: false,
  clientBasedCORS: () => true,
  pkce: {
    required: (ctx, client) => clientsById.get(client.clientId)?.pkceRequired
      ?? client.clientAuthMethod === 'none',
  },
  // Keycloak hands out a refresh token to every client allowed to use one, offline_access or not.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: {
    AccessToken: accessTokenTtl,
    ClientCredentials: accessTokenTtl,
    IdToken: accessTokenTtl,
    AuthorizationCode: 60,
    Interaction: 600,
    RefreshToken: sessionTtl,
    Session: sessionTtl,
    Grant: sessionTtl,
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        // Keycloak asks for confirmation unless the RP proves who it is with id_token_hint.
        const silent = Boolean(ctx.oidc.params.id_token_hint);
        ctx.body = pageShell('Logging out', `
<h1 id="kc-page-title">Logging out</h1><p>Do you want to log out?</p>
${form}
<button id="kc-logout" type="submit" form="op.logoutForm" name="logout" value="yes">Logout</button>
${silent ? "<script>document.getElementById('kc-logout').click();</script>" : ''}`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = pageShell('Logged out', '<h1 id="kc-page-title">You are logged out</h1>');
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf || tokenResource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, indicator, client) => {
        if (indicator !== tokenResource) throw new errors.InvalidTarget();
        return resourceServerInfo(client);
      },
    },
  },
  async findAccount(ctx, sub) {
    const account = accountsById.get(sub);
    if (!account || !account.enabled) return undefined;
    return { accountId: sub, claims: async () => ({ sub, ...keycloakClaims(account) }) };
  },
  async extraTokenClaims(ctx, token) {
    const account = token.accountId
      ? accountsById.get(token.accountId)
      : accountsByName.get(`service-account-${token.clientId}`);
    const extra = { typ: 'Bearer', azp: token.clientId };
    return account ? { ...extra, ...keycloakClaims(account) } : extra;
  },
  formats: {
    customizers: {
      async jwt(ctx, token, jwt) {
        // RFC 9068 says typ "at+jwt"; Keycloak says "JWT", and validators written for Keycloak
        // may insist on it. The header object does not exist yet at this point.
        jwt.header = { ...(jwt.header || {}), typ: 'JWT' };
        jwt.payload.aud = audienceFor(token.clientId, jwt.payload.resource_access);
        if (!token.accountId) {
          // client_credentials: Keycloak's subject is the service-account user, not the client.
          const serviceAccount = accountsByName.get(`service-account-${token.clientId}`);
          if (serviceAccount) jwt.payload.sub = serviceAccount.id;
        }
        return jwt;
      },
    },
  },
  interactions: {
    url: (ctx, interaction) => `${realmPath}/login-actions/authenticate/${interaction.uid}`,
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = errorPage(out);
  },
});

// Keycloak-style redirect URI wildcards (see globMatches).
const registeredRedirects = (clientId) => clientsById.get(clientId)?.redirectUris || [];
const registeredLogoutRedirects = (clientId) => clientsById.get(clientId)?.postLogoutRedirectUris || [];
provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
  return globMatches(registeredRedirects(this.clientId), value);
};
provider.Client.prototype.postLogoutRedirectUriAllowed = function postLogoutRedirectUriAllowed(value) {
  return globMatches(registeredLogoutRedirects(this.clientId), value);
};

provider.on('server_error', (ctx, err) => console.error('idp server_error:', err));
if (debug) {
  for (const event of ['grant.error', 'authorization.error', 'end_session.error', 'revocation.error']) {
    provider.on(event, (ctx, err) => console.error(`idp ${event}:`, err.message, err.error_description || ''));
  }
}

// ---------------------------------------------------------------- password grant (ROPC)

async function passwordGrant(ctx) {
  const { client, params } = ctx.oidc;
  const checked = checkPassword(params.username, params.password);
  if (checked.error) throw new errors.CustomOIDCProviderError('invalid_grant', checked.error);
  const { account } = checked;

  // Keycloak always adds its default scopes; it issues an ID token only when openid is asked for.
  const requested = String(params.scope || '').split(' ').filter(Boolean);
  const scope = [...new Set([...requested, 'profile', 'email'])]
    .filter((s) => supportedScopes.includes(s)).join(' ');

  const grant = new provider.Grant({ accountId: account.id, clientId: client.clientId });
  grant.addOIDCScope(scope);
  grant.addResourceScope(tokenResource, scope);
  const grantId = await grant.save();

  const accessToken = new provider.AccessToken({
    accountId: account.id, client, grantId, gty: 'password', scope,
  });
  accessToken.resourceServer = new provider.ResourceServer(tokenResource, resourceServerInfo(client));
  const body = {
    access_token: await accessToken.save(),
    expires_in: accessToken.expiration,
    token_type: 'Bearer',
    scope,
  };

  if (client.grantTypeAllowed('refresh_token')) {
    const refreshToken = new provider.RefreshToken({
      accountId: account.id, client, grantId, gty: 'password', scope, resource: tokenResource, rotations: 0,
    });
    body.refresh_token = await refreshToken.save();
    body.refresh_expires_in = refreshToken.expiration;
  }

  if (requested.includes('openid')) {
    const idToken = new provider.IdToken({ sub: account.id, ...keycloakClaims(account) }, { ctx });
    idToken.scope = scope;
    idToken.set('at_hash', body.access_token);
    body.id_token = await idToken.issue({ use: 'idtoken' });
  }
  ctx.body = body;
}

provider.registerGrantType('password', passwordGrant, ['username', 'password', 'scope']);

// ---------------------------------------------------------------- endpoints served here

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function sendJson(res, status, payload, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(payload));
}

function sendHtml(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

function basicCredentials(req) {
  const match = /^Basic\s+(.+)$/i.exec(req.headers.authorization || '');
  if (!match) return null;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return null;
  return [decodeURIComponent(decoded.slice(0, colon)), decodeURIComponent(decoded.slice(colon + 1))];
}

async function login(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new errors.SessionNotFound('interaction does not match the session cookie');
  const action = `${realmPath}/login-actions/authenticate/${uid}`;

  if (details.prompt.name === 'consent') {
    // A first-party test realm: approve whatever is asked, as Keycloak does for clients with
    // "Consent required" off.
    const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = details.prompt.details;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
    if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }

  if (req.method === 'GET') return sendHtml(res, 200, loginPage(action));
  if (req.method !== 'POST') return sendJson(res, 405, { error: 'method_not_allowed' });

  const form = new URLSearchParams(await readBody(req));
  const checked = checkPassword(form.get('username'), form.get('password'));
  if (checked.error) {
    const message = checked.error === 'Account disabled'
      ? 'Account is disabled, contact your administrator.'
      : 'Invalid username or password.';
    return sendHtml(res, 200, loginPage(action, { username: form.get('username') || '', error: message }));
  }
  return provider.interactionFinished(req, res, { login: { accountId: checked.account.id } }, {
    mergeWithLastSubmission: false,
  });
}

async function userinfo(req, res) {
  const match = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization || '');
  const claims = match && readOwnJwt(match[1]);
  const account = claims && accountsById.get(claims.sub);
  if (!account || !account.enabled) {
    return sendJson(res, 401, { error: 'invalid_token', error_description: 'Token verification failed' }, {
      'www-authenticate': 'Bearer realm="' + realmName + '", error="invalid_token"',
    });
  }
  return sendJson(res, 200, { sub: account.id, ...keycloakClaims(account) });
}

async function introspect(req, res) {
  const form = new URLSearchParams(await readBody(req));
  const [clientId, secret] = basicCredentials(req) || [form.get('client_id'), form.get('client_secret')];
  const client = clientsById.get(clientId);
  if (!client || client.publicClient || client.secret !== secret) {
    return sendJson(res, 401, { error: 'invalid_client', error_description: 'Authentication failed.' });
  }
  const token = form.get('token') || '';
  const claims = readOwnJwt(token);
  if (claims) {
    return sendJson(res, 200, {
      ...claims, active: true, client_id: claims.azp, username: claims.preferred_username, token_type: 'Bearer',
    });
  }
  const refresh = await provider.RefreshToken.find(token).catch(() => undefined);
  if (refresh && !refresh.isExpired && !refresh.consumed) {
    const account = accountsById.get(refresh.accountId);
    return sendJson(res, 200, {
      active: true, sub: refresh.accountId, client_id: refresh.clientId, exp: refresh.exp,
      scope: refresh.scope, username: account?.username, token_type: 'Refresh',
    });
  }
  return sendJson(res, 200, { active: false });
}

function realmInfo(res) {
  // GET /realms/<realm> on Keycloak publishes the realm's public key; some adapters read it.
  const spki = verifyKey.export({ type: 'spki', format: 'der' }).toString('base64');
  return sendJson(res, 200, {
    realm: realmName,
    public_key: spki,
    'token-service': `${issuer}${oidcPath}`,
    'account-service': `${issuer}/account`,
    'tokens-not-before': 0,
  });
}

async function acceptClientSecretPost(req) {
  // Keycloak accepts client_secret_basic and client_secret_post alike; oidc-provider allows one
  // method per client. Move body credentials into a Basic header so both work here too.
  if (req.method !== 'POST' || req.headers.authorization) return;
  if (!String(req.headers['content-type'] || '').startsWith('application/x-www-form-urlencoded')) return;
  const form = new URLSearchParams(await readBody(req));
  const [clientId, secret] = [form.get('client_id'), form.get('client_secret')];
  if (clientId && secret) {
    const pair = `${encodeURIComponent(clientId)}:${encodeURIComponent(secret)}`;
    req.headers.authorization = `Basic ${Buffer.from(pair).toString('base64')}`;
    form.delete('client_id');
    form.delete('client_secret');
  }
  // The stream is spent; oidc-provider falls back to a pre-parsed body.
  req.body = form.toString();
}

const providerCallback = provider.callback();

async function route(req, res) {
  const url = new URL(req.url, issuer);
  const p = url.pathname;
  if (p === realmPath) return realmInfo(res);
  if (!p.startsWith(`${realmPath}/`)) return sendJson(res, 404, { error: 'Realm does not exist' });

  const loginMatch = p.slice(realmPath.length).match(/^\/login-actions\/authenticate\/([\w-]+)$/);
  if (loginMatch) return login(req, res, loginMatch[1]);
  if (p === `${realmPath}${oidcPath}/userinfo`) return userinfo(req, res);
  if (p === `${realmPath}${oidcPath}/token/introspect` && req.method === 'POST') return introspect(req, res);
  if (p === `${realmPath}${oidcPath}/token` || p === `${realmPath}${oidcPath}/revoke`) {
    await acceptClientSecretPost(req);
  }

  // Mount oidc-provider under /realms/<realm>: it works out its mount point from originalUrl.
  req.originalUrl = req.url;
  req.url = req.url.slice(realmPath.length) || '/';
  return providerCallback(req, res);
}

const server = http.createServer((req, res) => {
  route(req, res).catch((err) => {
    if (debug || !err.expose) console.error('idp request failed:', err);
    if (res.headersSent) return res.end();
    return sendJson(res, err.statusCode || err.status || 500, {
      error: err.error || 'server_error',
      error_description: err.error_description || err.message,
    });
  });
});

server.listen(port, host, () => {
  console.log(`test IdP (realm ${realmName}) listening: ${issuer}/.well-known/openid-configuration`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  // Never hang a test session's teardown on a stuck socket.
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
