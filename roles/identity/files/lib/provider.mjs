// oidc-provider configured from the runtime config: the tenant's clients, its keys, JWT access tokens for its
// API, the device flow for command-line clients, and this project's pages in place of the library's.

import Provider, { errors, interactionPolicy } from 'oidc-provider';

import { currentRequest, log } from './context.mjs';
import { escapeHtml, message, page, setPageHeaders, withoutScripts } from './pages.mjs';
import { storageAdapter } from './store.mjs';

function clientMetadata(client, secrets) {
  const metadata = {
    client_id: client.client_id,
    grant_types: client.grant_types,
    redirect_uris: client.redirect_uris,
    response_types: client.grant_types.includes('authorization_code') ? ['code'] : [],
    token_endpoint_auth_method: client.token_endpoint_auth_method,
  };
  if (client.client_secret_file) metadata.client_secret = secrets[client.client_id];
  if (client.id_token_signed_response_alg) metadata.id_token_signed_response_alg = client.id_token_signed_response_alg;
  return metadata;
}

function htmlSource(ctx, status, title, body) {
  if (status) ctx.status = status;
  ctx.type = 'html';
  ctx.body = page(title, body);
}

// The device flow's forms come from oidc-provider (ids op.deviceInputForm / op.deviceConfirmForm, with its xsrf
// field); the buttons here submit them.
async function userCodeInputSource(ctx, form, out, err) {
  let note = 'Enter the code your device shows.';
  if (err && (err.userCode || err.name === 'NoCodeError')) note = 'That code is not right, or has expired. Try again.';
  else if (err && err.name === 'AbortedError') note = 'The sign-in was cancelled.';
  else if (err) note = 'Something went wrong with this code. Try again.';
  htmlSource(ctx, null, 'Connect a device', `${message(note, err ? 'error' : '')}
${form}
<button type="submit" form="op.deviceInputForm">Continue</button>`);
}

async function userCodeConfirmSource(ctx, form, client, deviceInfo, userCode) {
  htmlSource(ctx, null, 'Confirm the device', `<p>A device using <strong>${escapeHtml(client.clientId)}</strong>
asks to sign in as you. Continue only if it shows this code:</p>
<p><code>${escapeHtml(userCode)}</code></p>
${form}
<button type="submit" form="op.deviceConfirmForm">Continue</button>
<p><button class="secondary" type="submit" form="op.deviceConfirmForm" name="abort" value="yes">Cancel, it is not
mine</button></p>`);
}

async function successSource(ctx) {
  htmlSource(ctx, null, 'Device connected', message('The device is signed in. You can close this page.'));
}

async function logoutSource(ctx, form) {
  htmlSource(ctx, null, 'Sign out', `${form}
<p>Sign out of ${escapeHtml(ctx.host)}?</p>
<button type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button>
<p><button class="secondary" type="submit" form="op.logoutForm">Stay signed in</button></p>`);
}

async function postLogoutSuccessSource(ctx) {
  htmlSource(ctx, null, 'Signed out', message('You are signed out.'));
}

async function renderError(ctx, out) {
  htmlSource(ctx, null, 'Sign-in problem', `${message(out.error_description || out.error, 'error')}
<p>Go back to the application and start again.</p>`);
}

// oidc-provider's prompts, and one more reason to ask for the password: a session whose account findAccount no
// longer finds (disabled, or removed). Without it the session would count as signed in, with no account.
function interactionPolicyWithAccountCheck() {
  const { base, Check } = interactionPolicy;
  const policy = base();
  policy.get('login').checks.add(new Check('account_not_found', 'the account of this session is not available',
    (ctx) => (ctx.oidc.session.accountId && !ctx.oidc.account ? Check.REQUEST_PROMPT : Check.NO_NEED_TO_PROMPT)), 1);
  return policy;
}

export function createProvider({ config, pool, relaxed, accounts }) {
  const { ttl_s: ttl, resource } = config;
  const prefix = config.path_prefix;
  const resourceServer = {
    scope: config.scopes.join(' '),
    audience: resource,
    accessTokenTTL: ttl.access_token,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'EdDSA' } },
  };

  const provider = new Provider(config.issuer, {
    adapter: storageAdapter(pool, relaxed),
    clients: config.clients.map((client) => clientMetadata(client, config.clientSecrets)),
    jwks: config.jwks,
    cookies: {
      keys: config.cookieKeys,
      long: { signed: true, httpOnly: true, sameSite: 'lax', path: prefix },
      short: { signed: true, httpOnly: true, sameSite: 'lax' },
    },
    findAccount: (ctx, sub) => accounts.find(sub),
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    scopes: config.scopes,
    // The gateway reads the person's email and name from the ID token (access tokens are for the API, so there
    // is no userinfo endpoint to ask).
    conformIdTokenClaims: false,
    pkce: { methods: ['S256'], required: () => true },
    responseTypes: ['code'],
    features: {
      devInteractions: { enabled: false },
      pushedAuthorizationRequests: { enabled: false },
      userinfo: { enabled: false },
      revocation: { enabled: true },
      deviceFlow: { enabled: true, userCodeInputSource, userCodeConfirmSource, successSource },
      rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => (oneOf ? oneOf[0] : resource),
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, indicator) => {
          if (indicator !== resource) throw new errors.InvalidTarget();
          return resourceServer;
        },
      },
    },
    // Every client is the tenant's own: what it asks of the tenant's scopes, claims and API is granted without a
    // consent page (oidc-provider's recipe for first-party clients).
    loadExistingGrant: async (ctx) => {
      const { oidc } = ctx;
      const accountId = oidc.account.accountId;
      const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
      let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
      if (!grant || grant.accountId !== accountId || grant.clientId !== oidc.client.clientId) {
        grant = new oidc.provider.Grant({ accountId, clientId: oidc.client.clientId });
      }
      grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
      if (oidc.requestParamClaims.size) grant.addOIDCClaims([...oidc.requestParamClaims]);
      for (const [indicator, server] of Object.entries(oidc.resourceServers)) {
        const scopes = [...oidc.requestParamScopes].filter((scope) => server.scopes.has(scope));
        if (scopes.length) grant.addResourceScope(indicator, scopes.join(' '));
      }
      await grant.save();
      return grant;
    },
    issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token')
      && code.scopes.has('offline_access'),
    interactions: {
      policy: interactionPolicyWithAccountCheck(),
      url: async (ctx, interaction) => `${prefix}/interaction/${interaction.uid}`,
    },
    renderError,
    ttl: {
      AccessToken: ttl.access_token,
      AuthorizationCode: ttl.authorization_code,
      DeviceCode: ttl.device_code,
      Grant: ttl.grant,
      IdToken: ttl.id_token,
      Interaction: ttl.interaction,
      RefreshToken: ttl.refresh_token,
      Session: ttl.session,
    },
  });

  // X-Forwarded-Host/-Proto are believed (the front door and the gateway send the public host); X-Forwarded-For
  // only ever reaches here from the front door's socket (server.mjs drops it from TCP), and its last entry is
  // the address the front door saw.
  provider.proxy = true;
  provider.app.maxIpsCount = 1;

  // Runs around oidc-provider's own handling: the koa context for the storage adapter, the page headers on
  // every HTML answer.
  provider.use(async (ctx, next) => {
    const request = currentRequest();
    if (request) request.ctx = ctx;
    await next();
    // oidc-provider 8.8.1 answers 500 when the device form is posted without a live session (its cookie lost or
    // expired): its error page then persists a session that was never saved. Start the person over instead.
    if (ctx.status === 500 && ctx.method === 'POST' && ctx.oidc?.route === 'code_verification'
        && typeof ctx.oidc.session?.exp !== 'number') {
      ctx.redirect(`${prefix}/device`);
      ctx.status = 303;
    }
    ctx.set('X-Content-Type-Options', 'nosniff');
    if (ctx.response.is('html')) {
      setPageHeaders(ctx);
      if (typeof ctx.body === 'string' && ctx.body.includes('<script')) ctx.body = withoutScripts(ctx.body);
    }
  });

  provider.on('server_error', (ctx, err) => {
    if (ctx.oidc?.route === 'code_verification' && err.message.startsWith('persist can only be called')) {
      log('device_session_lost'); // answered with a redirect to the code page, above
      return;
    }
    log('server_error', { route: ctx.oidc?.route, error: err.name });
    console.error(err.stack);
  });
  for (const event of ['grant.error', 'authorization.error', 'end_session.error', 'code_verification.error']) {
    provider.on(event, (ctx, err) => {
      if (['authorization_pending', 'slow_down'].includes(err.error)) return; // a device polling, as it should
      log(event, { error: err.error ?? err.name, status: err.status });
    });
  }
  // oidc-provider warns once when an https issuer is reached without X-Forwarded-Proto: here that is the health
  // probe and the gateway on loopback, by design, not a misconfigured proxy.
  const proxyWarning = provider.app.middleware.find((middleware) => middleware.firstInternal);
  if (proxyWarning) proxyWarning.pass = true;
  return provider;
}
