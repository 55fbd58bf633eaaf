// oidc-provider's storage on identity.oidc_store (migration 0011): one row per model instance, with the columns
// its lookups need. Also the audit events outbox (identity.events), written inside the caller's transaction.

import { currentRequest, log } from './context.mjs';

const PRUNE_EVERY_MS = 10 * 60 * 1000;

// `client` is an address the front door told us (or the TCP peer's); it goes into detail as given, bounded.
export function clientAddress() {
  return (currentRequest()?.client ?? '').slice(0, 100);
}

export async function insertEvent(db, { actor, action, subject = null, detail = {} }) {
  await db.query('INSERT INTO identity.events (actor, action, subject, detail) VALUES ($1, $2, $3, $4)',
    [actor, action, subject, JSON.stringify(detail)]);
  log('event', { action, subject: subject ?? '-' });
}

export async function inTransaction(pool, work) {
  const db = await pool.connect();
  try {
    await db.query('BEGIN');
    const result = await work(db);
    await db.query('COMMIT');
    return result;
  } catch (err) {
    await db.query('ROLLBACK').catch(() => {});
    throw err;
  } finally {
    db.release();
  }
}

function epoch(date) {
  return date ? Math.floor(date.getTime() / 1000) : undefined;
}

// What the user flows do to stored models that the audit trail must hold, recorded in the same transaction as the
// save itself: a device code approved (an account set on it) or denied (an error set on it), and a session ended
// at the end_session endpoint.
async function deviceCodeEvent(db, previous, payload) {
  if (previous?.accountId || previous?.error) return;
  const clientId = payload.clientId;
  if (payload.accountId) {
    const account = `account:${payload.accountId}`;
    await insertEvent(db, { actor: account, action: 'identity.device_approved', subject: account,
      detail: { client: clientAddress(), client_id: clientId } });
  } else if (payload.error) {
    await insertEvent(db, { actor: 'anonymous', action: 'identity.device_denied', subject: null,
      detail: { client: clientAddress(), client_id: clientId, error: String(payload.error).slice(0, 100) } });
  }
}

// `relaxed`: connections whose commits do not wait for the WAL flush (synchronous_commit off), for the saves a
// crash may lose at no cost but a new login (interactions, sessions, grants, codes and tokens being issued);
// what must survive a crash once answered stays on `pool`: a code or token consumed (no replay after a restart),
// anything destroyed or revoked, and device codes with their audit events.
export function storageAdapter(pool, relaxed = pool) {
  return class PgAdapter {
    constructor(model) {
      this.model = model;
    }

    async upsert(id, payload, expiresIn) {
      const expiresAt = expiresIn ? new Date(Date.now() + expiresIn * 1000) : null;
      const row = [this.model, id, JSON.stringify(payload), payload.grantId ?? null, payload.userCode ?? null,
        payload.uid ?? null, expiresAt];
      const sql = `INSERT INTO identity.oidc_store (model, id, payload, grant_id, user_code, uid, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (model, id) DO UPDATE SET payload = EXCLUDED.payload, grant_id = EXCLUDED.grant_id,
          user_code = EXCLUDED.user_code, uid = EXCLUDED.uid, expires_at = EXCLUDED.expires_at`;
      if (this.model !== 'DeviceCode') {
        await relaxed.query(sql, row);
        return;
      }
      await inTransaction(pool, async (db) => {
        const { rows } = await db.query(
          'SELECT payload FROM identity.oidc_store WHERE model = $1 AND id = $2 FOR UPDATE', [this.model, id]);
        await db.query(sql, row);
        await deviceCodeEvent(db, rows[0]?.payload, payload);
      });
    }

    async #findWhere(column, value) {
      const { rows } = await pool.query(
        `SELECT payload, consumed_at FROM identity.oidc_store WHERE model = $1 AND ${column} = $2`,
        [this.model, value]);
      if (rows.length === 0) return undefined;
      const { payload, consumed_at: consumedAt } = rows[0];
      return consumedAt ? { ...payload, consumed: epoch(consumedAt) } : payload;
    }

    find(id) {
      return this.#findWhere('id', id);
    }

    findByUserCode(userCode) {
      return this.#findWhere('user_code', userCode);
    }

    findByUid(uid) {
      return this.#findWhere('uid', uid);
    }

    async consume(id) {
      await pool.query('UPDATE identity.oidc_store SET consumed_at = now() WHERE model = $1 AND id = $2',
        [this.model, id]);
    }

    async destroy(id) {
      const route = currentRequest()?.ctx?.oidc?.route;
      if (this.model !== 'Session' || route !== 'end_session_confirm') {
        await pool.query('DELETE FROM identity.oidc_store WHERE model = $1 AND id = $2', [this.model, id]);
        return;
      }
      // Logging out of every client destroys the session; out of one client only renews its id (the old one is
      // destroyed here too): `everywhere` tells them apart.
      const everywhere = Boolean(currentRequest()?.ctx?.oidc?.params?.logout);
      await inTransaction(pool, async (db) => {
        const { rows } = await db.query(
          'DELETE FROM identity.oidc_store WHERE model = $1 AND id = $2 RETURNING payload', [this.model, id]);
        const accountId = rows[0]?.payload?.accountId;
        if (accountId) {
          const account = `account:${accountId}`;
          await insertEvent(db, { actor: account, action: 'identity.logout', subject: account,
            detail: { client: clientAddress(), everywhere } });
        }
      });
    }

    async revokeByGrantId(grantId) {
      await pool.query('DELETE FROM identity.oidc_store WHERE grant_id = $1', [grantId]);
    }
  };
}

export async function pruneExpired(pool) {
  const { rowCount } = await pool.query('DELETE FROM identity.oidc_store WHERE expires_at < now()');
  if (rowCount) log('pruned', { rows: rowCount });
}

// Once now and every ten minutes; a failure is logged and retried at the next tick (the database may be
// restarting), never fatal.
export function startPruning(pool) {
  const run = () => pruneExpired(pool).catch((err) => log('prune_failed', { error: err.code ?? err.message }));
  run();
  const timer = setInterval(run, PRUNE_EVERY_MS);
  timer.unref();
  return timer;
}
