// The tenant's embedded OpenID Connect provider: `node server.mjs --config <runtime config>`.
//
// The runtime config is appliance/identity/provider.py's runtime_config(tenant). It listens on loopback TCP (the
// gateway's back channel and the deploy's health probe) and, when configured, on a unix socket the front door
// connects to; only there is X-Forwarded-For believed. Everything answers under the config's path_prefix.

import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import pg from 'pg';

import { Accounts } from './lib/accounts.mjs';
import { loadConfig } from './lib/config.mjs';
import { configurePages } from './lib/pages.mjs';
import { log, requestContext } from './lib/context.mjs';
import { createProvider } from './lib/provider.mjs';
import { FORM_MAX_BYTES, providerPages, RateLimiter } from './lib/routes.mjs';
import { startPruning } from './lib/store.mjs';

const SHUTDOWN_GRACE_MS = 4000;

function lastForwarded(header) {
  if (!header) return '';
  const entries = String(header).split(',');
  return entries[entries.length - 1].trim();
}

// A request path as the log may show it: no query string, and no setup-link secret.
function loggedPath(path, prefix) {
  return path.startsWith(`${prefix}/setup/`) ? `${prefix}/setup/-` : path;
}

function plain(res, status, text) {
  res.writeHead(status, {
    'Content-Type': 'text/plain; charset=utf-8', 'X-Content-Type-Options': 'nosniff', 'Cache-Control': 'no-store',
  });
  res.end(`${text}\n`);
}

function requestHandler(config, callback, via) {
  const prefix = config.path_prefix;
  return (req, res) => {
    const started = process.hrtime.bigint();
    // Anyone on the host can reach the TCP port: a forwarded client address is only the front door's to give.
    if (via === 'tcp') delete req.headers['x-forwarded-for'];
    const client = via === 'socket' ? lastForwarded(req.headers['x-forwarded-for']) : (req.socket.remoteAddress ?? '');
    const path = (req.url ?? '/').split('?')[0];
    res.on('finish', () => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      log('request', { method: req.method, path: loggedPath(path, prefix), status: res.statusCode,
        ms: ms.toFixed(1), via });
    });
    if (Number(req.headers['content-length'] ?? 0) > FORM_MAX_BYTES) {
      res.setHeader('Connection', 'close');
      plain(res, 413, 'Request body too large.');
      return;
    }
    if (path !== prefix && !path.startsWith(`${prefix}/`)) {
      plain(res, 404, 'Not found.');
      return;
    }
    // Mounted under the prefix: oidc-provider builds its URLs from originalUrl minus url.
    req.originalUrl = req.url;
    const rest = req.url.slice(prefix.length);
    req.url = rest.startsWith('/') ? rest : `/${rest}`;
    requestContext.run({ client, via, ctx: null }, () => callback(req, res));
  };
}

function listenTcp(server, host, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

async function listenSocket(server, path) {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path); // left by a previous run
  } catch (err) {
    if (err.code !== 'ENOENT') throw err;
  }
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  chmodSync(path, 0o660);
}

async function main() {
  const { values } = parseArgs({ options: { config: { type: 'string' } } });
  if (!values.config) {
    process.stderr.write('usage: node server.mjs --config <runtime config file>\n');
    process.exit(2);
  }
  const config = loadConfig(values.config);
  configurePages({ formActionOrigins: config.form_action_origins });
  const connection = {
    host: config.database.host, port: config.database.port, user: config.database.user,
    database: config.database.database, password: config.databasePassword,
    idleTimeoutMillis: 30_000, connectionTimeoutMillis: 10_000, application_name: 'identity',
  };
  const pool = new pg.Pool({ ...connection, max: 5 });
  // Saves a crash may lose at no cost but a new login (lib/store.mjs): their commits do not wait for the disk.
  const relaxed = new pg.Pool({ ...connection, max: 3, options: '-c synchronous_commit=off' });
  for (const each of [pool, relaxed]) each.on('error', (err) => log('db_error', { error: err.code ?? err.message }));

  const accounts = new Accounts(pool, config);
  await accounts.init();
  const provider = createProvider({ config, pool, relaxed, accounts });
  const limiter = new RateLimiter(config.login.per_client_per_minute);
  provider.use(providerPages({ provider, accounts, config, limiter }));
  const callback = provider.callback();

  const servers = [];
  const tcp = createServer(requestHandler(config, callback, 'tcp'));
  await listenTcp(tcp, config.listen.host, config.listen.port);
  servers.push(tcp);
  if (config.listen.socket) {
    const socket = createServer(requestHandler(config, callback, 'socket'));
    await listenSocket(socket, config.listen.socket);
    servers.push(socket);
  }
  const pruning = startPruning(pool);
  log('listening', { tenant: config.tenant, issuer: config.issuer, host: config.listen.host,
    port: config.listen.port, socket: config.listen.socket || '-' });

  let stopping = false;
  const stop = (signal) => {
    if (stopping) return;
    stopping = true;
    log('stopping', { signal });
    clearInterval(pruning);
    setTimeout(() => process.exit(0), SHUTDOWN_GRACE_MS).unref();
    Promise.all(servers.map((server) => new Promise((resolve) => {
      server.close(resolve); // also removes the socket file
      server.closeIdleConnections();
    })))
      .then(() => Promise.all([pool.end(), relaxed.end()]))
      .finally(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err) => {
  log('fatal', { error: err.code ?? err.name });
  console.error(err.stack);
  process.exit(1);
});
