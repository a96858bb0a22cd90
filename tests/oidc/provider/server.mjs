// An OpenID Connect provider for the SSO tests: node-oidc-provider (OpenID-certified) with
// deterministic sign-in pages and test-only control endpoints. tests/oidc_provider.py writes
// the JSON config and starts it: node server.mjs CONFIG.json (or OIDC_PROVIDER_CONFIG=...).
//
// Config: {port, issuer, clients: [...client metadata], users: {accountId: {password, claims}},
//          rpInitiatedLogout: true, ttl: {IdToken: 3600, ...}}
//
// Pages:   GET  /interaction/:uid        sign-in form (inputs `login`, `password`, #sign-in)
//          POST /interaction/:uid/login  checks the password, then logs in AND consents to
//                                        every requested scope/claim in one go
// Control: POST /__test/users/:account/claims  JSON claims merged into the user's (null deletes)
//          POST /__test/users/:account/revoke  drops the user's grants and tokens
//                                              ({"sessions": true}: their sessions too)
//          POST /__test/tamper                 JSON claims applied to the ID token of the next
//                                              token response, re-signed with the provider's key
//          POST /__test/rotate                 a new signing key: the JWKS then publishes only
//                                              it, and ID tokens are signed with it, under its kid
//          POST /__test/stranger_next          the next ID token is signed with a key the JWKS
//                                              never publishes (the same one every time)
//          GET  /__test/jwks_requests          {count}: how many times the JWKS was fetched
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

const configFile = process.argv[2] ?? process.env.OIDC_PROVIDER_CONFIG;
const config = JSON.parse(readFileSync(configFile, 'utf8'));
const users = config.users ?? {};

// One RS256 key per start: it signs the ID tokens, and the tampered ones, under the same kid.
async function newKey() {
  const { privateKey, publicKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await jose.exportJWK(privateKey)), alg: 'RS256', use: 'sig' };
  jwk.kid = await jose.calculateJwkThumbprint(jwk);
  const published = { ...(await jose.exportJWK(publicKey)), alg: 'RS256', use: 'sig' };
  published.kid = jwk.kid;
  return { privateKey, jwk, published };
}
const original = await newKey();
const signingKey = original.jwk;
// After /__test/rotate the provider's own key set is bypassed: `current` signs every ID token
// the token endpoint returns and is the only key the JWKS endpoint publishes.
let current = original;
let rotated = false;
const stranger = await newKey(); // never published
let strangerNext = false;
let jwksRequests = 0;

// Storage the control endpoints can search (by account); expired entries read as absent.
const store = new Map(); // `${model}:${id}` -> {model, payload, expiresAt}
class MemoryAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
    store.set(this.key(id), { model: this.model, payload, expiresAt });
  }

  async find(id) {
    const entry = store.get(this.key(id));
    if (entry && entry.expiresAt <= Date.now()) store.delete(this.key(id));
    return entry && entry.expiresAt > Date.now() ? entry.payload : undefined;
  }

  async findWhere(predicate) {
    for (const [key, entry] of store) {
      if (key.startsWith(`${this.model}:`) && predicate(entry.payload)) {
        return this.find(key.slice(this.model.length + 1));
      }
    }
    return undefined;
  }

  async findByUid(uid) { return this.findWhere((payload) => payload.uid === uid); }

  async findByUserCode(userCode) { return this.findWhere((payload) => payload.userCode === userCode); }

  async consume(id) {
    const payload = await this.find(id);
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { store.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    for (const [key, entry] of store) {
      if (entry.model === this.model && entry.payload.grantId === grantId) store.delete(key);
    }
  }
}

const page = (title, body) => `<!DOCTYPE html><html><head><meta charset="utf-8">
<title>${title}</title></head><body>${body}</body></html>`;
const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const errorPage = (error, description = '') => page('Error',
  `<p id="error">${escape(error)}: ${escape(description)}</p>`);

const provider = new Provider(config.issuer, {
  adapter: MemoryAdapter,
  clients: config.clients ?? [],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  async findAccount(ctx, id) {
    if (!users[id]) return undefined; // a removed account: refresh grants fail with invalid_grant
    return { accountId: id, claims: async () => ({ ...users[id].claims, sub: id }) };
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups', 'xms_edov'],
  },
  // Claims of the requested scopes go into the ID token too (the RP reads groups from it).
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  ttl: {
    AccessToken: 3600, AuthorizationCode: 60, ClientCredentials: 600, DeviceCode: 600,
    BackchannelAuthenticationRequest: 600, Grant: 3600, IdToken: 3600, Interaction: 600,
    RefreshToken: 86400, Session: 3600, ...config.ttl,
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: {
      enabled: config.rpInitiatedLogout ?? true,
      async logoutSource(ctx, form) {
        ctx.body = page('Sign out', `${form}<button id="sign-out" type="submit"
form="op.logoutForm" name="logout" value="yes">Sign out</button>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Signed out', '<p id="signed-out">Signed out</p>');
      },
    },
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = errorPage(out.error, out.error_description);
  },
});

async function readBody(req) {
  let text = '';
  for await (const chunk of req) text += chunk;
  return text;
}

function loginForm(ctx, uid, error) {
  ctx.type = 'html';
  ctx.body = page('Sign in', `${error ? `<p id="error">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
<input name="login" autofocus><input name="password" type="password">
<button id="sign-in" type="submit">Sign in</button></form>`);
}

// Consent to everything the authorization request asks for, then resume it.
async function finish(ctx, details, accountId, login) {
  const { params, prompt } = details;
  let grant = details.grantId && !login ? await provider.Grant.find(details.grantId) : undefined;
  grant ??= new provider.Grant({ accountId, clientId: params.client_id });
  if (params.scope) grant.addOIDCScope(params.scope);
  if (params.claims) {
    const requested = JSON.parse(params.claims);
    grant.addOIDCClaims(Object.keys({ ...requested.id_token, ...requested.userinfo }));
  }
  for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const result = { consent: { grantId: await grant.save() } };
  if (login) result.login = { accountId };
  await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: !login });
}

async function interaction(ctx, uid, submitted) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.prompt.name !== 'login') return finish(ctx, details, details.session.accountId, false);
  if (!submitted) return loginForm(ctx, uid);
  const form = new URLSearchParams(await readBody(ctx.req));
  const accountId = Object.keys(users).find(
    (id) => id === form.get('login') || users[id].claims?.email === form.get('login'),
  );
  if (!accountId || users[accountId].password !== form.get('password')) {
    ctx.status = 401;
    return loginForm(ctx, uid, 'Invalid login or password');
  }
  return finish(ctx, details, accountId, true);
}

let tamper = null; // claims to apply to the next ID token the token endpoint returns

async function control(ctx) {
  const body = ctx.method === 'POST' ? JSON.parse((await readBody(ctx.req)) || '{}') : {};
  const [, , resource, account, action] = ctx.path.split('/'); // /__test/users/:account/:action
  if (ctx.path === '/__test/tamper') {
    tamper = body;
    ctx.body = { tamper };
  } else if (ctx.path === '/__test/rotate' && ctx.method === 'POST') {
    current = await newKey();
    rotated = true;
    ctx.body = { kid: current.jwk.kid };
  } else if (ctx.path === '/__test/stranger_next' && ctx.method === 'POST') {
    strangerNext = true;
    ctx.body = { kid: stranger.jwk.kid };
  } else if (ctx.path === '/__test/jwks_requests') {
    ctx.body = { count: jwksRequests };
  } else if (resource === 'users' && users[account] && action === 'claims') {
    const claims = { ...users[account].claims, ...body };
    for (const [name, value] of Object.entries(body)) if (value === null) delete claims[name];
    users[account].claims = claims;
    ctx.body = { claims };
  } else if (resource === 'users' && users[account] && action === 'revoke') {
    const models = new Set(['Grant', 'AuthorizationCode', 'AccessToken', 'RefreshToken']);
    if (body.sessions) models.add('Session');
    let revoked = 0;
    for (const [key, entry] of store) {
      if (models.has(entry.model) && entry.payload.accountId === account) {
        store.delete(key);
        revoked += 1;
      }
    }
    ctx.body = { revoked };
  } else {
    ctx.status = 404;
    ctx.body = { error: `no control endpoint ${ctx.method} ${ctx.path}` };
  }
}

provider.use(async (ctx, next) => {
  // offline_access alone brings a refresh token (as at Entra ID or Keycloak): the library keeps
  // that scope only with prompt=consent, which our interactions then grant without asking.
  const offline = ctx.query.scope?.split(' ').includes('offline_access');
  if (ctx.method === 'GET' && ctx.path === '/auth' && offline && !ctx.query.prompt) {
    ctx.query = { ...ctx.query, prompt: 'consent' };
  }
  const match = ctx.path.match(/^\/interaction\/([^/]+)(\/login)?$/);
  try {
    if (match) return await interaction(ctx, match[1], ctx.method === 'POST' && Boolean(match[2]));
    if (ctx.path.startsWith('/__test/')) return await control(ctx);
  } catch (err) {
    if (!(err instanceof errors.OIDCProviderError) && !(err instanceof SyntaxError)) throw err;
    ctx.status = err.status ?? 400;
    ctx.type = 'html';
    ctx.body = errorPage(err.message, err.error_description);
    return undefined;
  }
  if (ctx.method === 'GET' && ctx.path === '/jwks') {
    jwksRequests += 1;
    if (rotated) {
      ctx.type = 'application/jwk-set+json';
      ctx.body = { keys: [current.published] };
      return undefined;
    }
  }
  await next();
  const resign = tamper || rotated || strangerNext;
  if (resign && ctx.oidc?.route === 'token' && ctx.status === 200 && ctx.body?.id_token) {
    const claims = { ...jose.decodeJwt(ctx.body.id_token), ...tamper };
    for (const [name, value] of Object.entries(tamper ?? {})) {
      if (value === null) delete claims[name];
    }
    const key = strangerNext ? stranger : current;
    const header = { ...jose.decodeProtectedHeader(ctx.body.id_token), kid: key.jwk.kid };
    const idToken = await new jose.SignJWT(claims).setProtectedHeader(header).sign(key.privateKey);
    ctx.body = { ...ctx.body, id_token: idToken };
    tamper = null;
    strangerNext = false;
  }
  return undefined;
});

provider.listen(config.port, '127.0.0.1', () => {
  console.log(`oidc-provider ${config.issuer} listening on 127.0.0.1:${config.port}`);
});
