-- Appending one audit event in one statement (issue 6, appliance/audit/chain.py): lock the chain head, take
-- the next seq, stamp the time, hash, insert and return (seq, hash) — one round trip instead of four (a
-- savepoint, the head lock, the insert, the release), held under the head lock for as short as possible.
--
-- The writer sends the canonical JSON of the event around the two values only the database knows here:
--   p_before = '{"action":…,"actor":…,"detail":…,"house_id":…,"seq":'     (canonical_json, up to the seq)
--   p_middle = ',"subject":…,"ts":"'                                       (after the seq, up to the time)
-- and the function completes it exactly as appliance/audit/canonical.py specifies: the seq in decimal, the
-- time as RFC 3339 UTC with six fractional digits and Z, then '"}'; the hash is
-- sha256(utf8(body) || prev_hash bytes), as for every event. The insert trigger still checks the link and
-- moves the head; verify recomputes every hash from the stored row, so text that did not match the columns
-- would show as an altered event.
-- plpgsql rather than sql: its statements' plans are cached for the session instead of planned at every call.
CREATE FUNCTION audit.append_event(
    p_actor text, p_action text, p_house_id uuid, p_subject text, p_detail jsonb, p_before text, p_middle text,
    OUT seq bigint, OUT hash text)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_prev text;
    v_ts timestamptz;
BEGIN
    SELECT h.seq + 1, h.hash INTO seq, v_prev FROM audit.lock_head() h;
    -- Stamped under the head lock, so event times follow seqs.
    v_ts := clock_timestamp();
    hash := encode(sha256(convert_to(p_before || seq::text || p_middle
                                     || to_char(v_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"}',
                                     'UTF8') || decode(v_prev, 'hex')), 'hex');
    INSERT INTO audit.events (seq, ts, actor, action, house_id, subject, detail, prev_hash, hash)
    VALUES (seq, v_ts, p_actor, p_action, p_house_id, p_subject, p_detail, v_prev, hash);
END
$$;

REVOKE ALL ON FUNCTION audit.append_event(text, text, uuid, text, jsonb, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit.append_event(text, text, uuid, text, jsonb, text, text) TO gateway;
