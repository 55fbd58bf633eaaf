-- Shipping the audit trail to S3 Object Lock (issue 6; appliance/audit/shipper.py).
--
-- audit.batches records every batch the shipper planned: its seq range and object key are written BEFORE the
-- object is PUT, so a shipper killed at any point finds the same range again after a restart and re-ships it
-- byte for byte (the batch's bytes are a function of its rows) instead of choosing other boundaries, which
-- would overlap what the store already holds. version_id/shipped_at are filled in once, after the store
-- acknowledged the PUT, in the same transaction that moves the watermark (audit.shipped).

CREATE TABLE audit.batches (
    first_seq     bigint PRIMARY KEY CHECK (first_seq > 0),
    last_seq      bigint NOT NULL UNIQUE CHECK (last_seq >= first_seq),
    object_key    text NOT NULL UNIQUE,
    event_count   integer NOT NULL CHECK (event_count = last_seq - first_seq + 1),
    body_bytes    bigint NOT NULL CHECK (body_bytes > 0),
    body_sha256   text NOT NULL CHECK (body_sha256 ~ '^[0-9a-f]{64}$'),
    jsonl_sha256  text NOT NULL CHECK (jsonl_sha256 ~ '^[0-9a-f]{64}$'),
    last_hash     text NOT NULL CHECK (last_hash ~ '^[0-9a-f]{64}$'),
    planned_at    timestamptz NOT NULL DEFAULT now(),
    version_id    text,
    retain_until  timestamptz,
    shipped_at    timestamptz
);
-- At most one batch is in flight: the shipper re-ships it before planning another.
CREATE UNIQUE INDEX batches_one_pending ON audit.batches ((true)) WHERE shipped_at IS NULL;

-- A plan is immutable; its shipped fields are written once; nothing is ever deleted.
CREATE FUNCTION audit.guard_batch() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'audit.batches is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.shipped_at IS NOT NULL THEN
        RAISE EXCEPTION 'audit batch % was shipped already; its record cannot change', OLD.first_seq
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (NEW.first_seq, NEW.last_seq, NEW.object_key, NEW.event_count, NEW.body_bytes, NEW.body_sha256,
        NEW.jsonl_sha256, NEW.last_hash, NEW.planned_at)
       IS DISTINCT FROM (OLD.first_seq, OLD.last_seq, OLD.object_key, OLD.event_count, OLD.body_bytes,
        OLD.body_sha256, OLD.jsonl_sha256, OLD.last_hash, OLD.planned_at) THEN
        RAISE EXCEPTION 'audit batch % plan cannot change', OLD.first_seq USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER batches_guard BEFORE UPDATE OR DELETE ON audit.batches
    FOR EACH ROW EXECUTE FUNCTION audit.guard_batch();
CREATE TRIGGER batches_no_truncate BEFORE TRUNCATE ON audit.batches
    FOR EACH STATEMENT EXECUTE FUNCTION audit.guard_batch();
ALTER TABLE audit.batches ENABLE ALWAYS TRIGGER batches_guard;
ALTER TABLE audit.batches ENABLE ALWAYS TRIGGER batches_no_truncate;

-- Why the shipper is not keeping up, for `appliance status` (NULL when its last attempt succeeded).
-- error_kind: 'store' (unreachable or refusing), 'database', 'chain' (a break in the rows it was to ship),
-- 'conflict' (the store holds something else where this batch belongs). The last two halt shipping.
ALTER TABLE audit.shipped
    ADD COLUMN error_kind  text CHECK (error_kind IN ('store', 'database', 'chain', 'conflict')),
    ADD COLUMN error       text,
    ADD COLUMN error_since timestamptz;

-- The watermark only moves forward (a restore brings back an older row; it is not an UPDATE).
CREATE FUNCTION audit.guard_watermark() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.last_seq < OLD.last_seq THEN
        RAISE EXCEPTION 'the audit watermark cannot move back from % to %', OLD.last_seq, NEW.last_seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER shipped_forward_only BEFORE UPDATE ON audit.shipped
    FOR EACH ROW EXECUTE FUNCTION audit.guard_watermark();
ALTER TABLE audit.shipped ENABLE ALWAYS TRIGGER shipped_forward_only;

REVOKE ALL ON audit.batches FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.guard_batch(), audit.guard_watermark() FROM PUBLIC;
GRANT SELECT, INSERT ON audit.batches TO audit;
GRANT UPDATE (version_id, retain_until, shipped_at) ON audit.batches TO audit;
