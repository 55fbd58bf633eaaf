-- The audit trail (issue 6): insert-only, monotonically numbered, hash-chained events.
-- hash = sha256(canonical_json(event) || prev_hash), computed by the writer (appliance/audit/chain.py, canonical
-- JSON specified in appliance/audit/canonical.py). The database guarantees the links: an event must follow the
-- chain head exactly (seq + 1, prev_hash = head's hash), and the head moves with every insert, so concurrent
-- writers serialise on the head row and can never fork the chain.

CREATE SCHEMA audit;
REVOKE ALL ON SCHEMA audit FROM PUBLIC;

CREATE TABLE audit.events (
    seq        bigint PRIMARY KEY CHECK (seq > 0),
    ts         timestamptz NOT NULL,
    actor      text NOT NULL,
    action     text NOT NULL,
    house_id   uuid,
    subject    text,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(detail) = 'object'),
    prev_hash  text NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    hash       text NOT NULL UNIQUE CHECK (hash ~ '^[0-9a-f]{64}$')
);
CREATE INDEX events_by_house ON audit.events (house_id, seq) WHERE house_id IS NOT NULL;

-- The chain's head: one row, the last event's seq and hash (seq 0 and 64 zeros before the first event).
CREATE TABLE audit.chain_head (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq   bigint NOT NULL,
    hash  text NOT NULL
);
INSERT INTO audit.chain_head (id, seq, hash) VALUES (true, 0, repeat('0', 64));

-- The shipper's watermark (issue 6): the last event known to be stored under Object Lock.
CREATE TABLE audit.shipped (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_seq    bigint NOT NULL DEFAULT 0,
    last_hash   text NOT NULL DEFAULT repeat('0', 64),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO audit.shipped (id) VALUES (true);

-- Writers call this first in their transaction: it locks the head until commit and says what comes next.
-- SECURITY DEFINER so that no writer role needs UPDATE on the head (which would let it move the head freely).
CREATE FUNCTION audit.lock_head(OUT seq bigint, OUT hash text)
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT h.seq, h.hash FROM audit.chain_head h WHERE h.id FOR UPDATE $$;

CREATE FUNCTION audit.link_event() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    head_seq bigint;
    head_hash text;
BEGIN
    SELECT h.seq, h.hash INTO head_seq, head_hash FROM audit.chain_head h WHERE h.id FOR UPDATE;
    IF NEW.seq IS DISTINCT FROM head_seq + 1 OR NEW.prev_hash IS DISTINCT FROM head_hash THEN
        RAISE EXCEPTION 'audit event % does not follow the chain head % (lock it with audit.lock_head() first)',
            NEW.seq, head_seq USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    UPDATE audit.chain_head SET seq = NEW.seq, hash = NEW.hash WHERE id;
    RETURN NEW;
END
$$;

CREATE FUNCTION audit.refuse_change() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'audit.events is insert-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_link BEFORE INSERT ON audit.events FOR EACH ROW EXECUTE FUNCTION audit.link_event();
CREATE TRIGGER events_insert_only BEFORE UPDATE OR DELETE ON audit.events
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON audit.events
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
-- ALWAYS: the triggers fire even under session_replication_role = replica (which silences ordinary triggers).
ALTER TABLE audit.events ENABLE ALWAYS TRIGGER events_link;
ALTER TABLE audit.events ENABLE ALWAYS TRIGGER events_insert_only;
ALTER TABLE audit.events ENABLE ALWAYS TRIGGER events_no_truncate;
-- The head only moves through the insert trigger.
CREATE TRIGGER chain_head_no_truncate BEFORE TRUNCATE OR DELETE ON audit.chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
ALTER TABLE audit.chain_head ENABLE ALWAYS TRIGGER chain_head_no_truncate;

-- The name the design documents use, as a view: one source of truth (audit.events).
CREATE VIEW public.audit_events AS
    SELECT seq, ts, actor, action, house_id, subject, detail, prev_hash, hash FROM audit.events;

REVOKE ALL ON audit.events, audit.chain_head, audit.shipped, public.audit_events FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.lock_head(), audit.link_event(), audit.refuse_change() FROM PUBLIC;
GRANT USAGE ON SCHEMA audit TO gateway, audit;
-- The gateway appends (and only appends); no role gets UPDATE, DELETE or TRUNCATE on events.
GRANT INSERT ON audit.events TO gateway;
GRANT EXECUTE ON FUNCTION audit.lock_head() TO gateway;
-- The shipper reads events and the head, and moves its own watermark.
GRANT SELECT ON audit.events, audit.chain_head, public.audit_events TO audit;
GRANT SELECT, UPDATE ON audit.shipped TO audit;
