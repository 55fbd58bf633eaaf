// The provider's own pages (koa middleware on oidc-provider's app, paths relative to the mount point):
//   GET  /interaction/:uid         the sign-in form (or consent, given at once: every client is the tenant's own)
//   POST /interaction/:uid/login   the password check
//   GET  /setup/:token             the set-password form of a one-time setup link
//   POST /setup/:token             sets it

import { errors } from 'oidc-provider';

import { PASSWORD_MAX_BYTES, PASSWORD_MIN_CHARS } from './accounts.mjs';
import { currentRequest, log } from './context.mjs';
import { loginForm, message, render, setupForm } from './pages.mjs';

export const FORM_MAX_BYTES = 16 * 1024;
const WRONG = 'Email or password is not right.';
const LINK_GONE = 'This link is no longer valid. Ask your administrator for a new one.';
const EXPIRED = 'This sign-in has expired or was already completed. Go back to the application and start again.';

class HttpError extends Error {
  constructor(status, text) {
    super(text);
    this.status = status;
  }
}

// At most `limit` attempts per client address in any minute (in memory: one provider process per tenant).
export class RateLimiter {
  constructor(limit, windowMs = 60_000) {
    this.limit = limit;
    this.windowMs = windowMs;
    this.hits = new Map();
    this.timer = setInterval(() => this.#sweep(), windowMs);
    this.timer.unref();
  }

  allow(key) {
    const now = Date.now();
    const recent = (this.hits.get(key) ?? []).filter((at) => now - at < this.windowMs);
    if (recent.length >= this.limit) {
      this.hits.set(key, recent);
      return false;
    }
    recent.push(now);
    this.hits.set(key, recent);
    return true;
  }

  #sweep() {
    const now = Date.now();
    for (const [key, times] of this.hits) {
      if (times.every((at) => now - at >= this.windowMs)) this.hits.delete(key);
    }
  }
}

// An urlencoded form of at most FORM_MAX_BYTES with each of `fields` exactly once; else 413 or 400.
async function readForm(ctx, fields) {
  if (!ctx.request.is('application/x-www-form-urlencoded')) throw new HttpError(400, 'Malformed form.');
  const chunks = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    size += chunk.length;
    if (size > FORM_MAX_BYTES) {
      ctx.set('Connection', 'close');
      throw new HttpError(413, 'This form is too large.');
    }
    chunks.push(chunk);
  }
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(Buffer.concat(chunks));
  } catch {
    throw new HttpError(400, 'Malformed form.');
  }
  const params = new URLSearchParams(text);
  const form = {};
  for (const name of fields) {
    const values = params.getAll(name);
    if (values.length !== 1) throw new HttpError(400, 'Malformed form.');
    [form[name]] = values;
  }
  return form;
}

function splitPath(path) {
  const parts = path.split('/').slice(1);
  if (parts[0] === 'interaction' && parts.length === 2 && parts[1]) return { route: 'interaction', id: parts[1] };
  if (parts[0] === 'interaction' && parts.length === 3 && parts[1] && parts[2] === 'login') {
    return { route: 'login', id: parts[1] };
  }
  if (parts[0] === 'setup' && parts.length === 2 && parts[1]) return { route: 'setup', id: parts[1] };
  return null;
}

export function providerPages({ provider, accounts, config, limiter }) {
  const prefix = config.path_prefix;

  async function details(ctx, uid) {
    try {
      const interaction = await provider.interactionDetails(ctx.req, ctx.res);
      if (interaction.uid !== uid) throw new HttpError(400, EXPIRED);
      return interaction;
    } catch (err) {
      if (err instanceof errors.SessionNotFound) throw new HttpError(400, EXPIRED);
      throw err;
    }
  }

  // Every client is the tenant's own (config.clients, no registration): what it asks for is granted, the
  // oidc-provider way of first-party consent. Normally loadExistingGrant has granted it before a consent prompt
  // arises; this answers one that arises anyway.
  async function consent(ctx, interaction) {
    const { prompt: { details: missing }, params, session, grantId } = interaction;
    const grant = grantId ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, { consent: { grantId: await grant.save() } },
      { mergeWithLastSubmission: true });
    ctx.status = 303;
    ctx.redirect(returnTo);
  }

  function loginPage(ctx, status, uid, email, error) {
    render(ctx, status, 'Sign in', loginForm({ action: `${prefix}/interaction/${uid}/login`, email, error }));
  }

  async function showInteraction(ctx, uid) {
    const interaction = await details(ctx, uid);
    if (interaction.prompt.name === 'consent') {
      await consent(ctx, interaction);
      return;
    }
    loginPage(ctx, 200, uid, interaction.params.login_hint ?? '', '');
  }

  async function submitLogin(ctx, uid) {
    const client = currentRequest()?.client ?? '';
    if (!limiter.allow(client)) {
      ctx.set('Retry-After', '60');
      throw new HttpError(429, 'Too many sign-in attempts from your address. Try again in a minute.');
    }
    const form = await readForm(ctx, ['email', 'password']);
    const interaction = await details(ctx, uid);
    if (interaction.prompt.name !== 'login') throw new HttpError(400, EXPIRED);
    const result = await accounts.login(form.email, form.password, interaction.params.client_id);
    if (!result.accountId) {
      loginPage(ctx, 200, uid, form.email, WRONG);
      return;
    }
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, { login: { accountId: result.accountId } },
      { mergeWithLastSubmission: false });
    ctx.status = 303;
    ctx.redirect(returnTo);
  }

  async function showSetup(ctx, token) {
    const account = await accounts.setupLink(token);
    if (!account) throw new HttpError(404, LINK_GONE);
    render(ctx, 200, 'Set your password', setupForm({ action: `${prefix}/setup/${token}`, email: account.email }));
  }

  async function submitSetup(ctx, token) {
    // Hashing costs memory and time: setup forms count against the same per-address limit as sign-ins.
    if (!limiter.allow(currentRequest()?.client ?? '')) {
      ctx.set('Retry-After', '60');
      throw new HttpError(429, 'Too many attempts from your address. Try again in a minute.');
    }
    const form = await readForm(ctx, ['password', 'repeat']);
    const account = await accounts.setupLink(token);
    if (!account) throw new HttpError(404, LINK_GONE);
    let error = '';
    if ([...form.password].length < PASSWORD_MIN_CHARS) {
      error = `The password needs at least ${PASSWORD_MIN_CHARS} characters.`;
    } else if (Buffer.byteLength(form.password) > PASSWORD_MAX_BYTES) {
      error = `The password may have at most ${PASSWORD_MAX_BYTES} bytes.`;
    } else if (form.password !== form.repeat) {
      error = 'The two passwords differ.';
    }
    if (error) {
      render(ctx, 400, 'Set your password', setupForm({ action: `${prefix}/setup/${token}`, email: account.email,
        error }));
      return;
    }
    if (!await accounts.setPassword(token, form.password)) throw new HttpError(404, LINK_GONE);
    render(ctx, 200, 'Password set', message('Your password is set. You can now sign in with it.'));
  }

  const handlers = {
    GET: { interaction: showInteraction, setup: showSetup },
    POST: { login: submitLogin, setup: submitSetup },
  };

  return async function pages(ctx, next) {
    const target = splitPath(ctx.path);
    if (!target) return next();
    const handler = handlers[ctx.method]?.[target.route];
    try {
      if (!handler) throw new HttpError(405, 'Method not allowed.');
      await handler(ctx, target.id);
    } catch (err) {
      if (!(err instanceof HttpError)) {
        log('page_error', { route: target.route, error: err.code ?? err.name });
        console.error(err.stack);
        err = new HttpError(500, 'Something went wrong. Try again later.');
      }
      const title = err.status === 404 ? 'Link not valid' : err.status === 429 ? 'Try again later' : 'Sign in';
      render(ctx, err.status, title, message(err.message, err.status >= 500 ? 'error' : ''));
    }
    return undefined;
  };
}
