-- audit.lock_head() in plpgsql (same signature, grants kept): as a SQL function with SET options it could not
-- be inlined and was planned again at every call, about 50 µs of every audited write spent under the chain
-- head's lock; plpgsql caches the plan for the session (see 0006).
CREATE OR REPLACE FUNCTION audit.lock_head(OUT seq bigint, OUT hash text)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT h.seq, h.hash INTO seq, hash FROM audit.chain_head h WHERE h.id FOR UPDATE;
END
$$;
