// People (identity.accounts): who they are for oidc-provider, their password check with its lockout, and the
// one-time setup links that set a password. Each change and its event share one transaction.
//
// The operator's side (appliance/identity/accounts.py) creates accounts and links and hashes with argon2-cffi;
// the PHC strings it stores verify here unchanged.

import { createHash, randomBytes } from 'node:crypto';

import argon2 from 'argon2';

import { log } from './context.mjs';
import { clientAddress, inTransaction, insertEvent } from './store.mjs';

export const PASSWORD_MIN_CHARS = 12;
export const PASSWORD_MAX_BYTES = 1024;
const EMAIL_MAX = 254;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const SETUP_TOKEN = /^[A-Za-z0-9_-]{16,128}$/;

export function normalizeEmail(email) {
  return email.trim().toLowerCase().slice(0, EMAIL_MAX + 1);
}

export class Accounts {
  constructor(pool, config) {
    this.pool = pool;
    this.maxFailures = config.login.max_failures;
    this.lockoutSeconds = config.login.lockout_s;
    this.hashOptions = {
      type: argon2.argon2id, memoryCost: config.argon2.memory_kib, timeCost: config.argon2.time_cost,
      parallelism: config.argon2.parallelism, hashLength: 32,
    };
    this.dummyHash = null;
  }

  // A hash of nothing anyone knows, verified when there is no hash to check, so an unknown email costs what a
  // wrong password costs.
  async init() {
    this.dummyHash = await argon2.hash(randomBytes(32).toString('base64'), this.hashOptions);
  }

  // oidc-provider's findAccount: a disabled (or deleted) account is not found, so nothing is issued for it.
  async find(accountId) {
    if (typeof accountId !== 'string' || !UUID.test(accountId)) return undefined;
    const { rows } = await this.pool.query(
      'SELECT id, email, display_name FROM identity.accounts WHERE id = $1 AND NOT disabled', [accountId]);
    if (rows.length === 0) return undefined;
    const { id, email, display_name: name } = rows[0];
    return {
      accountId: id,
      async claims() {
        return { sub: id, email, email_verified: true, name };
      },
    };
  }

  async #verify(hash, password) {
    try {
      return await argon2.verify(hash, password);
    } catch {
      return false; // a stored hash argon2 cannot parse matches nothing
    }
  }

  // { accountId } when the password is right, else { reason }; either way the events are written. The caller
  // answers every failure alike.
  async login(emailInput, password, clientId) {
    const email = normalizeEmail(emailInput);
    const client = clientAddress();
    const { rows } = email && email.length <= EMAIL_MAX
      ? await this.pool.query(
        `SELECT id, password_hash, disabled, coalesce(locked_until > now(), false) AS locked
         FROM identity.accounts WHERE email = $1`, [email])
      : { rows: [] };
    const account = rows[0];
    const tooLong = Buffer.byteLength(password) > PASSWORD_MAX_BYTES;
    const matches = await this.#verify(account?.password_hash ?? this.dummyHash, tooLong ? '' : password)
      && !tooLong && Boolean(account?.password_hash);

    let reason;
    if (!account) reason = 'unknown_account';
    else if (account.disabled) reason = 'disabled';
    else if (!account.password_hash) reason = 'no_password';
    else if (account.locked) reason = 'locked';
    else if (!matches) reason = 'wrong_password';

    if (!reason) {
      const accountId = await inTransaction(this.pool, async (db) => {
        // The row as it was verified: not disabled, locked or given another password meanwhile.
        const { rowCount } = await db.query(
          `UPDATE identity.accounts SET failed_logins = 0, locked_until = NULL, updated_at = now()
           WHERE id = $1 AND NOT disabled AND password_hash = $2 AND (locked_until IS NULL OR locked_until <= now())`,
          [account.id, account.password_hash]);
        if (rowCount === 0) return null;
        const subject = `account:${account.id}`;
        await insertEvent(db, { actor: subject, action: 'identity.login', subject,
          detail: { client, client_id: clientId } });
        return account.id;
      });
      if (accountId) return { accountId };
      reason = 'locked';
    }

    const subject = account ? `account:${account.id}` : null;
    const failed = { actor: 'anonymous', action: 'identity.login_failed', subject,
      detail: { reason, email, client, client_id: clientId } };
    await inTransaction(this.pool, async (db) => {
      if (reason === 'wrong_password') {
        // A lock that has run out starts the count afresh; the failure that reaches max_failures locks.
        const { rows: counted } = await db.query(
          `UPDATE identity.accounts SET
             failed_logins = CASE WHEN locked_until IS NULL THEN failed_logins + 1 ELSE 1 END,
             locked_until = CASE WHEN (CASE WHEN locked_until IS NULL THEN failed_logins + 1 ELSE 1 END) >= $2
                                 THEN now() + make_interval(secs => $3) END,
             updated_at = now()
           WHERE id = $1 AND (locked_until IS NULL OR locked_until <= now())
           RETURNING failed_logins, locked_until`,
          [account.id, this.maxFailures, this.lockoutSeconds]);
        await insertEvent(db, failed);
        if (counted[0]?.locked_until) {
          await insertEvent(db, { actor: 'anonymous', action: 'identity.account_locked', subject,
            detail: { client, failures: counted[0].failed_logins,
              until: counted[0].locked_until.toISOString() } });
        }
      } else {
        await insertEvent(db, failed);
      }
    });
    log('login_failed', { reason });
    return { reason };
  }

  // The account a setup link may set the password of, or null (unknown, used or expired).
  async setupLink(token) {
    if (!SETUP_TOKEN.test(token)) return null;
    const { rows } = await this.pool.query(
      `SELECT a.id, a.email FROM identity.setup_links l JOIN identity.accounts a ON a.id = l.account_id
       WHERE l.token_hash = $1 AND l.used_at IS NULL AND l.expires_at > now()`, [tokenHash(token)]);
    return rows[0] ?? null;
  }

  // Uses the link (once) to set the password: the account unlocked, its provider sessions and grants ended (a
  // setup link also serves a reset), and the event. False when the link is no longer usable.
  async setPassword(token, password) {
    if (!SETUP_TOKEN.test(token)) return false;
    const hash = await argon2.hash(password, this.hashOptions);
    return inTransaction(this.pool, async (db) => {
      const { rows } = await db.query(
        `UPDATE identity.setup_links SET used_at = now()
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING account_id`,
        [tokenHash(token)]);
      if (rows.length === 0) return false;
      const accountId = rows[0].account_id;
      await db.query(
        `UPDATE identity.accounts SET password_hash = $2, password_changed_at = now(), failed_logins = 0,
           locked_until = NULL, updated_at = now() WHERE id = $1`, [accountId, hash]);
      await db.query(
        `WITH grants AS (SELECT id FROM identity.oidc_store WHERE model = 'Grant' AND payload->>'accountId' = $1)
         DELETE FROM identity.oidc_store WHERE (model = 'Session' AND payload->>'accountId' = $1)
           OR grant_id IN (SELECT id FROM grants) OR (model = 'Grant' AND id IN (SELECT id FROM grants))`,
        [accountId]);
      const subject = `account:${accountId}`;
      await insertEvent(db, { actor: subject, action: 'identity.password_set', subject,
        detail: { client: clientAddress(), via: 'setup_link' } });
      return true;
    });
  }
}

function tokenHash(token) {
  return createHash('sha256').update(token).digest();
}
