-- The product's structural data (ARCHITECTURE.md, "The product served to each tenant").
--
-- Ids are UUIDs that clients may supply, so optimistic writes know their row before the server answers.
-- Every table has house_id and deleted_at: DELETE through the API is a soft delete, and the synced tables
-- (houses, agents, members, threads, environments, configs) are served as shapes whose WHERE is
-- `house_id IN (<caller's houses>) AND deleted_at IS NULL`. houses.house_id equals houses.id (a plain column
-- with a CHECK rather than a generated one: Postgres 15 does not replicate generated columns).
-- Names that appear in mentions or lookups have a strict pattern, so they never need quoting anywhere.

CREATE TABLE public.houses (
    id          uuid PRIMARY KEY,
    house_id    uuid NOT NULL CHECK (house_id = id),
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    created_by  uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

CREATE TABLE public.members (
    id              uuid PRIMARY KEY,
    house_id        uuid NOT NULL REFERENCES public.houses (id),
    principal_id    uuid NOT NULL,
    principal_kind  text NOT NULL CHECK (principal_kind IN ('user', 'agent')),
    role            text NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    created_by      uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
-- One live membership per principal and house; removed memberships stay as history.
CREATE UNIQUE INDEX members_live_house_principal ON public.members (house_id, principal_id) WHERE deleted_at IS NULL;
-- The gateway's hottest query: which houses (and with which role) does this principal belong to.
CREATE INDEX members_live_by_principal ON public.members (principal_id, house_id) INCLUDE (role)
    WHERE deleted_at IS NULL;

CREATE TABLE public.environments (
    id           uuid PRIMARY KEY,
    house_id     uuid NOT NULL REFERENCES public.houses (id),
    name         text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    description  text NOT NULL DEFAULT '' CHECK (char_length(description) <= 2000),
    created_by   uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz
);
CREATE UNIQUE INDEX environments_live_name ON public.environments (house_id, lower(name)) WHERE deleted_at IS NULL;

CREATE TABLE public.agents (
    id              uuid PRIMARY KEY,
    house_id        uuid NOT NULL REFERENCES public.houses (id),
    -- What `@<name>` in a thread entry refers to (case-insensitive within the house).
    name            text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$'),
    -- The agent workers' handler: a built-in (echo, webhook) or an `appliance.agents` entry point name.
    handler         text NOT NULL CHECK (handler ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'),
    environment_id  uuid REFERENCES public.environments (id),
    config          jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(config) = 'object'),
    created_by      uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
CREATE UNIQUE INDEX agents_live_name ON public.agents (house_id, lower(name)) WHERE deleted_at IS NULL;

CREATE TABLE public.threads (
    id          uuid PRIMARY KEY,
    house_id    uuid NOT NULL REFERENCES public.houses (id),
    title       text NOT NULL DEFAULT '' CHECK (char_length(title) <= 500),
    created_by  uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX threads_live_by_house ON public.threads (house_id, created_at) WHERE deleted_at IS NULL;

CREATE TABLE public.configs (
    id              uuid PRIMARY KEY,
    house_id        uuid NOT NULL REFERENCES public.houses (id),
    environment_id  uuid REFERENCES public.environments (id),
    key             text NOT NULL CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'),
    value           jsonb NOT NULL,
    created_by      uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
-- A key once per house (house-wide, environment_id NULL) and once per environment.
CREATE UNIQUE INDEX configs_live_key ON public.configs
    (house_id, coalesce(environment_id, '00000000-0000-0000-0000-000000000000'::uuid), key) WHERE deleted_at IS NULL;

-- Not synced: values never leave the gateway in clear. `value` is AES-256-GCM ciphertext (nonce || ciphertext
-- || tag) under the tenant's secrets_encryption_key, with the row's id and house_id as associated data, so a
-- ciphertext copied to another row or house does not decrypt.
CREATE TABLE public.secrets (
    id              uuid PRIMARY KEY,
    house_id        uuid NOT NULL REFERENCES public.houses (id),
    environment_id  uuid REFERENCES public.environments (id),
    name            text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'),
    value           bytea NOT NULL,
    created_by      uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
CREATE UNIQUE INDEX secrets_live_name ON public.secrets
    (house_id, coalesce(environment_id, '00000000-0000-0000-0000-000000000000'::uuid), name) WHERE deleted_at IS NULL;

-- Not synced. The invite code is shown once; only its SHA-256 is kept.
CREATE TABLE public.invites (
    id           uuid PRIMARY KEY,
    house_id     uuid NOT NULL REFERENCES public.houses (id),
    role         text NOT NULL CHECK (role IN ('admin', 'member')),
    code_hash    bytea NOT NULL UNIQUE CHECK (length(code_hash) = 32),
    created_by   uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    accepted_by  uuid,
    accepted_at  timestamptz,
    deleted_at   timestamptz
);
CREATE INDEX invites_live_by_house ON public.invites (house_id) WHERE deleted_at IS NULL;

-- Not synced. The key is shown once; only its SHA-256 is kept (keys carry 256 random bits, so a fast hash is
-- enough). house_id is set for an agent's keys (the agent's house) and NULL for a user's own keys.
CREATE TABLE public.api_keys (
    id              uuid PRIMARY KEY,
    principal_id    uuid NOT NULL,
    principal_kind  text NOT NULL CHECK (principal_kind IN ('user', 'agent')),
    house_id        uuid REFERENCES public.houses (id),
    name            text NOT NULL DEFAULT '' CHECK (char_length(name) <= 200),
    key_hash        bytea NOT NULL CHECK (length(key_hash) = 32),
    created_by      uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    last_used_at    timestamptz,
    deleted_at      timestamptz
);
CREATE INDEX api_keys_live_by_principal ON public.api_keys (principal_id) WHERE deleted_at IS NULL;
CREATE INDEX api_keys_live_by_house ON public.api_keys (house_id) WHERE deleted_at IS NULL AND house_id IS NOT NULL;

-- Logical replication sends whole old rows, so a shape can tell a row leaving its WHERE from one staying.
ALTER TABLE public.houses REPLICA IDENTITY FULL;
ALTER TABLE public.members REPLICA IDENTITY FULL;
ALTER TABLE public.environments REPLICA IDENTITY FULL;
ALTER TABLE public.agents REPLICA IDENTITY FULL;
ALTER TABLE public.threads REPLICA IDENTITY FULL;
ALTER TABLE public.configs REPLICA IDENTITY FULL;

-- Privileges: least for each role. Nobody gets DELETE or TRUNCATE: deletes are soft.
REVOKE ALL ON public.houses, public.members, public.environments, public.agents, public.threads, public.configs,
    public.secrets, public.invites, public.api_keys FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON public.houses, public.members, public.environments, public.agents, public.threads,
    public.configs, public.secrets, public.invites, public.api_keys TO gateway;
-- The sync engine reads what it serves (snapshots), and nothing else.
GRANT SELECT ON public.houses, public.members, public.environments, public.agents, public.threads, public.configs
    TO sync;
-- Agent workers read their agent's config and thread metadata.
GRANT SELECT ON public.agents, public.threads, public.configs TO agents;
