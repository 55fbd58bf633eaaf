// The runtime config (appliance/identity/provider.py: runtime_config) and the secret files it names.
// Nothing here recomputes what the config says; secrets are read once, at start, and never logged.

import { readFileSync } from 'node:fs';

export function readSecret(path) {
  const value = readFileSync(path, 'utf8').trim();
  if (!value) throw new Error(`secret file ${path} is empty`);
  return value;
}

// The identity_jwks secret (appliance/identity/keys.py): private JWKs, newest first. A key with `retired_at` is
// still published (tokens it signed keep verifying) but must not sign: oidc-provider signs with the first key
// of an algorithm, so the keys in use go first; the non-standard member is dropped before oidc-provider sees it.
export function signingKeys(document) {
  const keys = JSON.parse(document).keys;
  if (!Array.isArray(keys) || keys.length === 0) throw new Error('the JWKS holds no keys');
  const current = keys.filter((key) => key.retired_at === undefined || key.retired_at === null);
  const retired = keys.filter((key) => !current.includes(key));
  return [...current, ...retired].map(({ retired_at: _retired, ...key }) => key);
}

export function loadConfig(path) {
  const config = JSON.parse(readFileSync(path, 'utf8'));
  for (const name of ['issuer', 'path_prefix', 'listen', 'database', 'jwks_file', 'cookie_keys_file', 'resource',
    'clients', 'scopes', 'ttl_s', 'login', 'argon2', 'form_action_origins']) {
    if (config[name] === undefined) throw new Error(`${path}: "${name}" is missing`);
  }
  if (!config.path_prefix.startsWith('/') || config.path_prefix.endsWith('/')) {
    throw new Error(`${path}: path_prefix must start with "/" and not end with one`);
  }
  if (new URL(config.issuer).pathname !== config.path_prefix) {
    throw new Error(`${path}: the issuer's path is not path_prefix`);
  }
  return {
    ...config,
    databasePassword: readSecret(config.database.password_file),
    jwks: { keys: signingKeys(readSecret(config.jwks_file)) },
    // One key a line, newest first (keygrip signs with the first and verifies with all).
    cookieKeys: readSecret(config.cookie_keys_file).split(/\s+/),
    clientSecrets: Object.fromEntries(config.clients.filter((client) => client.client_secret_file)
      .map((client) => [client.client_id, readSecret(client.client_secret_file)])),
  };
}
