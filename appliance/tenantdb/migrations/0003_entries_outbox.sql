-- Thread entries and mention dispatch: the gateway's internal state (schema appliance, never synced).
--
-- An entry is recorded here (state 'pending', with the exact message to append) and its activations put in the
-- outbox ('held') in one transaction, before it is appended to the thread's stream. The append then happens
-- under a lock on the entry row, and marks it 'appended' with the offset the stream returned, releasing its
-- activations ('ready'). Whoever finds an entry still pending (a client retrying, or the gateway's recovery
-- sweep after a crash) takes the same lock and first looks in the stream after `floor_offset` for a message
-- with the entry's id, so an entry reaches the stream exactly once. See appliance/gateway/entries.py.

CREATE TABLE appliance.thread_entries (
    id            uuid PRIMARY KEY,
    thread_id     uuid NOT NULL,
    house_id      uuid NOT NULL,
    author_id     uuid NOT NULL,
    -- The message as appended to the stream (JSON object).
    message       jsonb NOT NULL,
    -- SHA-256 of what the client sent: a retry carries the same, a different entry reusing the id does not.
    request_hash  text NOT NULL,
    state         text NOT NULL CHECK (state IN ('pending', 'appended', 'failed')),
    -- A stream offset at or before the entry: the highest offset recorded for the thread when it was inserted.
    floor_offset  text NOT NULL,
    -- Stream-Next-Offset of the append: the position right after the entry.
    next_offset   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    appended_at   timestamptz
);
CREATE INDEX thread_entries_tail ON appliance.thread_entries (thread_id, next_offset COLLATE "C")
    WHERE state = 'appended';
CREATE INDEX thread_entries_pending ON appliance.thread_entries (created_at) WHERE state = 'pending';

-- Activations of agents mentioned in entries, delivered by the gateway's dispatcher to the agent workers.
-- held: the entry is not yet in the stream; ready: due at next_attempt_at (also a delivery lease: a claimed
-- row is pushed into the future while it is being delivered, so a crashed deliverer's rows come back);
-- delivered: the worker acknowledged; gave_up: unknown or deleted agent, or a permanent refusal (last_error).
CREATE TABLE appliance.outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id         uuid NOT NULL REFERENCES appliance.thread_entries (id),
    thread_id        uuid NOT NULL,
    house_id         uuid NOT NULL,
    agent_name       text NOT NULL,
    agent_id         uuid,
    mentioned_by     uuid NOT NULL,
    state            text NOT NULL CHECK (state IN ('held', 'ready', 'delivered', 'gave_up')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE UNIQUE INDEX outbox_one_per_mention ON appliance.outbox (entry_id, lower(agent_name));
CREATE INDEX outbox_due ON appliance.outbox (next_attempt_at) WHERE state = 'ready';

REVOKE ALL ON appliance.thread_entries, appliance.outbox FROM PUBLIC;
GRANT USAGE ON SCHEMA appliance TO gateway;
GRANT SELECT, INSERT, UPDATE ON appliance.thread_entries, appliance.outbox TO gateway;
