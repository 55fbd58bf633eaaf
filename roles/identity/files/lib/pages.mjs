// The provider's HTML: plain server-rendered pages, no script, one inline style; everything echoed is escaped.

// form-action applies to every redirect a form's submission leads to (Chromium enforces it): a login ends at the
// gateway's callback and then where the app asked to return, so the tenant's origins and the apps' it allows
// are listed (configurePages, from the runtime config's form_action_origins).
let contentSecurityPolicy = policy([]);

function policy(origins) {
  return `default-src 'none'; style-src 'unsafe-inline'; form-action 'self' ${origins.join(' ')}; `
    + "frame-ancestors 'none'; base-uri 'none'";
}

export function configurePages({ formActionOrigins }) {
  for (const origin of formActionOrigins) {
    if (!/^https?:\/\/[a-z0-9.-]+(:\d+)?$/.test(origin)) throw new Error(`not an origin: ${origin}`);
  }
  contentSecurityPolicy = policy(formActionOrigins);
}

export function escapeHtml(value) {
  return String(value ?? '').replace(/[&<>"'`=]/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function setPageHeaders(ctx) {
  ctx.set('Content-Security-Policy', contentSecurityPolicy);
  ctx.set('X-Content-Type-Options', 'nosniff');
  ctx.set('Referrer-Policy', 'no-referrer');
  ctx.set('Cache-Control', 'no-store');
}

const STYLE = 'body{font-family:system-ui,sans-serif;background:#f4f4f5;margin:0;padding:48px 16px;color:#18181b}'
  + 'main{max-width:360px;margin:0 auto;background:#fff;padding:24px 28px;border-radius:8px;'
  + 'box-shadow:0 1px 3px rgba(0,0,0,.15)}h1{font-size:1.3em;margin-top:0}label{display:block;margin:12px 0 4px}'
  + 'input[type=email],input[type=password],input[type=text]{width:100%;box-sizing:border-box;padding:8px;'
  + 'font-size:1em}button{margin-top:16px;padding:8px 16px;font-size:1em;cursor:pointer}'
  + '.error{color:#b91c1c}code{font-size:1.4em;letter-spacing:.1em}.secondary{background:none;border:none;'
  + 'color:#52525b;text-decoration:underline;padding:0}';

// `body` is HTML the caller built with escapeHtml around every value it did not write itself.
export function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>${escapeHtml(title)}</title>
<style>${STYLE}</style>
</head>
<body><main>
<h1>${escapeHtml(title)}</h1>
${body}
</main></body>
</html>
`;
}

export function render(ctx, status, title, body) {
  setPageHeaders(ctx);
  ctx.status = status;
  ctx.type = 'html';
  ctx.body = page(title, body);
}

export function message(text, className = '') {
  return `<p${className ? ` class="${className}"` : ''}>${escapeHtml(text)}</p>`;
}

export function loginForm({ action, email = '', error = '' }) {
  return `${error ? message(error, 'error') : ''}
<form method="post" action="${escapeHtml(action)}">
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="username" required autofocus value="${escapeHtml(email)}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>`;
}

export function setupForm({ action, email, error = '' }) {
  return `${error ? message(error, 'error') : ''}
<p>Choose the password for <strong>${escapeHtml(email)}</strong> (at least 12 characters).</p>
<form method="post" action="${escapeHtml(action)}">
<input type="email" name="username" autocomplete="username" value="${escapeHtml(email)}" hidden readonly>
<label for="password">New password</label>
<input id="password" name="password" type="password" autocomplete="new-password" minlength="12" required autofocus>
<label for="repeat">Repeat it</label>
<input id="repeat" name="repeat" type="password" autocomplete="new-password" minlength="12" required>
<button type="submit">Set password</button>
</form>`;
}

// oidc-provider's own auto-submitting forms (form_post: a prefilled device code, a logout resumed) rely on an
// inline script, which this CSP forbids: show their button instead, so a person submits them.
export function withoutScripts(html) {
  return html
    .replace(/<script>[\s\S]*?<\/script>/g, '')
    .replace(/<noscript>[\s\S]*?(<button[^>]*>)[^<]*<\/button>\s*<\/noscript>/g, '$1Continue</button>');
}
