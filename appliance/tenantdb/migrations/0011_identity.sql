-- The tenant's identity plane (issue 17).
--
-- Two sides, two owners:
-- * schema `identity`: the embedded OIDC provider's own data (people's accounts, its grants and sessions), read
--   and written by the role `identity` (the provider, roles/identity/files/) and by the operator's
--   `appliance user ...` (as the superuser). The gateway reads none of it but the events outbox.
-- * public.users, public.identities, appliance.auth_sessions, appliance.login_states: the gateway's side, for
--   every issuer it accepts (the embedded one included): (issuer, subject) -> one principal, the people it
--   knows, refresh sessions and logins in flight.

CREATE SCHEMA identity;
REVOKE ALL ON SCHEMA identity FROM PUBLIC;

-- People who sign in at the embedded provider. `id` is the `sub` of their tokens. The password is an argon2id
-- PHC string ($argon2id$v=19$m=..,t=..,p=..$salt$hash); NULL until set through a one-time setup link.
CREATE TABLE identity.accounts (
    id                   uuid PRIMARY KEY,
    email                text NOT NULL CHECK (email = lower(email) AND char_length(email) BETWEEN 3 AND 254
                                              AND email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
    display_name         text NOT NULL DEFAULT '' CHECK (char_length(display_name) <= 200),
    password_hash        text CHECK (password_hash IS NULL OR password_hash LIKE '$argon2id$%'),
    disabled             boolean NOT NULL DEFAULT false,
    -- Consecutive failed passwords; at identity.login_max_failures the account is locked until locked_until.
    failed_logins        integer NOT NULL DEFAULT 0,
    locked_until         timestamptz,
    password_changed_at  timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX accounts_email ON identity.accounts (email);

-- One-time links to set a password (`appliance user add|reset-password --setup-link`): only the SHA-256 of the
-- link's secret is stored; a link is used once.
CREATE TABLE identity.setup_links (
    token_hash  bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    account_id  uuid NOT NULL REFERENCES identity.accounts (id),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- oidc-provider's models (Session, Grant, AuthorizationCode, DeviceCode, RefreshToken, Interaction, ...), one
-- row each, as its adapter interface stores them: the payload, and the lookups it needs (grant, user code, uid).
CREATE TABLE identity.oidc_store (
    model        text NOT NULL,
    id           text NOT NULL,
    payload      jsonb NOT NULL,
    grant_id     text,
    user_code    text,
    uid          text,
    expires_at   timestamptz,
    consumed_at  timestamptz,
    PRIMARY KEY (model, id)
);
CREATE INDEX oidc_store_grant ON identity.oidc_store (grant_id) WHERE grant_id IS NOT NULL;
CREATE UNIQUE INDEX oidc_store_user_code ON identity.oidc_store (model, user_code) WHERE user_code IS NOT NULL;
CREATE UNIQUE INDEX oidc_store_uid ON identity.oidc_store (model, uid) WHERE uid IS NOT NULL;
CREATE INDEX oidc_store_expiry ON identity.oidc_store (expires_at) WHERE expires_at IS NOT NULL;

-- What the provider did that the audit trail must hold (logins, failures, lockouts, device approvals, passwords
-- set), written in the same transaction as the change it records. The gateway moves each row into the
-- hash-chained trail and deletes it in one transaction (appliance/gateway/identity/events.py): the provider
-- never writes the chain itself, so the chain's canonical form has one implementation.
CREATE TABLE identity.events (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor    text NOT NULL CHECK (char_length(actor) BETWEEN 1 AND 100),
    action   text NOT NULL CHECK (action ~ '^identity\.[a-z_.]+$'),
    subject  text CHECK (char_length(subject) <= 300),
    detail   jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(detail) = 'object')
);

CREATE FUNCTION identity.notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('identity_events', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER events_notify AFTER INSERT ON identity.events FOR EACH STATEMENT
    EXECUTE FUNCTION identity.notify_event();

REVOKE ALL ON ALL TABLES IN SCHEMA identity FROM PUBLIC;
GRANT USAGE ON SCHEMA identity TO identity, gateway;
-- The provider reads accounts and records what a login did to them; it never creates, renames or deletes one.
GRANT SELECT ON identity.accounts TO identity;
GRANT UPDATE (failed_logins, locked_until, password_hash, password_changed_at, updated_at)
    ON identity.accounts TO identity;
GRANT SELECT, UPDATE (used_at) ON identity.setup_links TO identity;
GRANT SELECT, INSERT, UPDATE, DELETE ON identity.oidc_store TO identity;
GRANT INSERT ON identity.events TO identity;
GRANT SELECT, DELETE ON identity.events TO gateway;

-- The people the gateway knows, one per principal that logged in through an issuer (display name and email as
-- the issuer last said; disabled refuses their logins, refreshes and issuer tokens).
CREATE TABLE public.users (
    principal_id  uuid PRIMARY KEY,
    display_name  text NOT NULL DEFAULT '' CHECK (char_length(display_name) <= 200),
    email         text NOT NULL DEFAULT '' CHECK (char_length(email) <= 254),
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz
);

-- (issuer, subject) -> principal: created at the first login, never changed.
CREATE TABLE public.identities (
    issuer        text NOT NULL CHECK (char_length(issuer) <= 500),
    subject       text NOT NULL CHECK (char_length(subject) BETWEEN 1 AND 255),
    principal_id  uuid NOT NULL REFERENCES public.users (principal_id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX identities_principal ON public.identities (principal_id);

-- Browser login sessions: a rotating refresh token (only its SHA-256 kept). Each refresh replaces the current
-- token; a token presented again after its rotation ends the whole session (it was stolen or replayed).
CREATE TABLE appliance.auth_sessions (
    id             uuid PRIMARY KEY,
    principal_id   uuid NOT NULL REFERENCES public.users (principal_id),
    issuer         text NOT NULL,
    current_hash   bytea NOT NULL CHECK (octet_length(current_hash) = 32),
    previous_hash  bytea,
    generation     integer NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    refreshed_at   timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_why    text
);
CREATE UNIQUE INDEX auth_sessions_current ON appliance.auth_sessions (current_hash);
CREATE INDEX auth_sessions_previous ON appliance.auth_sessions (previous_hash) WHERE previous_hash IS NOT NULL;
CREATE INDEX auth_sessions_principal ON appliance.auth_sessions (principal_id) WHERE revoked_at IS NULL;

-- Logins in flight (GET /api/auth/login until its callback): state (hashed), nonce, PKCE verifier, where to
-- return, and the hash of the browser-binding cookie. Deleted when used: a state is good once.
CREATE TABLE appliance.login_states (
    state_hash     bytea PRIMARY KEY CHECK (octet_length(state_hash) = 32),
    binding_hash   bytea NOT NULL CHECK (octet_length(binding_hash) = 32),
    issuer_name    text NOT NULL,
    nonce          text NOT NULL,
    code_verifier  text NOT NULL,
    return_to      text NOT NULL,
    client         text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL
);
CREATE INDEX login_states_expiry ON appliance.login_states (expires_at);

REVOKE ALL ON public.users, public.identities, appliance.auth_sessions, appliance.login_states FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON public.users, public.identities, appliance.auth_sessions TO gateway;
GRANT SELECT, INSERT, DELETE ON appliance.login_states TO gateway;
