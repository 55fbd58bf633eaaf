-- Recording an entry in one function call instead of five nested ones (issue 21; appliance/gateway/domain/
-- entry_groups.py).
--
-- A grouped entry went through try_record_entry_after (0014) -> try_record_entry (0010) -> record_entry (0008)
-- -> audit.append_event (0006) -> audit.lock_head (0009): each a SQL statement of its caller's, run through the
-- executor with its own start-up, a function scan and a tuple store for its one row, and each with a SET
-- search_path that is pushed and popped around the call (with the search path looked up again).
-- appliance.record_entry_flat does exactly what those did, in one body:
--   p_finish: first release every lock the session holds and mark a finished group's entries appended (0014);
--   p_wait:   wait for the entry lock (record_entry, 0008), or answer 'locked' without recording anything when
--             another session holds it (try_record_entry, 0010);
--   then the checks, the entry row, its outbox rows and its audit event, as record_entry (0008).
--
-- Step 4 (appliance.mark_appended, for the gateway's own step 4 and for the finished group's here) finds the
-- entries by id, one primary key lookup each. As one join with the ids (0014, and the gateway's step 4 statement
-- before this), the planner took the partial index of pending entries: it estimates a handful of rows there, but
-- the index still holds an entry for every row marked appended since the last vacuum, and a bitmap scan (which
-- never marks them dead) visited all of them every time - about 1 ms per group of 8 entries after a few
-- thousand appends, growing with the write rate; or, with its statistics taken while the table was small, a
-- sequential scan of the whole table. "Not appended nor failed" is "pending" (the table's CHECK), said so that
-- no partial index applies.
--
-- Measured on one backend recording groups of 8 entries (each group carrying the previous one's step 4), both
-- ways alternated on the same database: 396 us of Postgres CPU per entry before, 263 us with this migration.
--
-- Session locks stack, so the older functions' second pg_advisory_lock of a key the session already held changed
-- nothing (the gateway releases a connection's entry locks all at once, pg_advisory_unlock_all); here the key is
-- locked once. The older functions stay, as calls of this one, for gateways started before this migration.
--
-- audit.append_event locks the chain head itself instead of through audit.lock_head(): the same statement
-- (SELECT ... FOR UPDATE of the one head row), without a second SECURITY DEFINER call. The insert trigger
-- (audit.link_event, 0002) still checks every event against the head and moves it: the chain's guarantees do not
-- depend on the writer.

CREATE OR REPLACE FUNCTION audit.append_event(
    p_actor text, p_action text, p_house_id uuid, p_subject text, p_detail jsonb, p_before text, p_middle text,
    OUT seq bigint, OUT hash text)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_prev text;
    v_ts timestamptz;
BEGIN
    SELECT h.seq + 1, h.hash INTO seq, v_prev FROM audit.chain_head h WHERE h.id FOR UPDATE;
    -- Stamped under the head lock, so event times follow seqs.
    v_ts := clock_timestamp();
    hash := encode(sha256(convert_to(p_before || seq::text || p_middle
                                     || to_char(v_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"}',
                                     'UTF8') || decode(v_prev, 'hex')), 'hex');
    INSERT INTO audit.events (seq, ts, actor, action, house_id, subject, detail, prev_hash, hash)
    VALUES (seq, v_ts, p_actor, p_action, p_house_id, p_subject, p_detail, v_prev, hash);
END
$$;

CREATE FUNCTION appliance.mark_appended(p_done uuid[], p_offsets text[], OUT o_released bigint,
                                        OUT o_marked bigint)
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count bigint;
BEGIN
    o_marked := 0;
    FOR i IN 1 .. coalesce(cardinality(p_done), 0) LOOP
        UPDATE appliance.thread_entries e SET state = 'appended', next_offset = p_offsets[i], appended_at = now()
         WHERE e.id = p_done[i] AND e.state NOT IN ('appended', 'failed');
        GET DIAGNOSTICS v_count = ROW_COUNT;
        o_marked := o_marked + v_count;
    END LOOP;
    UPDATE appliance.outbox o SET state = 'ready', next_attempt_at = now()
     WHERE o.entry_id = ANY (p_done) AND o.state = 'held';
    GET DIAGNOSTICS o_released = ROW_COUNT;
END
$$;

REVOKE ALL ON FUNCTION appliance.mark_appended(uuid[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION appliance.mark_appended(uuid[], text[]) TO gateway;

CREATE FUNCTION appliance.record_entry_flat(
    p_wait boolean, p_finish boolean, p_done uuid[], p_offsets text[],
    p_key bigint, p_id uuid, p_thread uuid, p_author uuid, p_message jsonb, p_hash text, p_roles text[],
    p_mentions text[], p_actor text, p_subject text, p_detail jsonb, p_audit text[], p_middle text,
    OUT o_status text, OUT o_house_id uuid, OUT o_message jsonb)
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role text;
    v_kind text;
    v_existing_thread uuid;
    v_existing_hash text;
    v_unknown text[];
    v_unknown_json text := '';
BEGIN
    IF p_finish THEN
        PERFORM pg_advisory_unlock_all();
        PERFORM appliance.mark_appended(p_done, p_offsets);
    END IF;
    IF p_wait THEN
        -- The audit text below relies on it (and the gateway only sends names its mention pattern found).
        IF EXISTS (SELECT FROM unnest(p_mentions) n WHERE n !~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$') THEN
            RAISE EXCEPTION 'record_entry: a mention is not an agent name' USING ERRCODE = 'data_exception';
        END IF;
        PERFORM pg_advisory_lock(p_key);
    ELSE
        IF NOT pg_try_advisory_lock(p_key) THEN
            o_status := 'locked';
            RETURN;
        END IF;
        IF EXISTS (SELECT FROM unnest(p_mentions) n WHERE n !~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$') THEN
            RAISE EXCEPTION 'record_entry: a mention is not an agent name' USING ERRCODE = 'data_exception';
        END IF;
    END IF;

    SELECT t.house_id, m.role, m.principal_kind INTO o_house_id, v_role, v_kind
      FROM public.threads t
      JOIN public.houses h ON h.id = t.house_id AND h.deleted_at IS NULL
      LEFT JOIN public.members m ON m.house_id = t.house_id AND m.principal_id = p_author AND m.deleted_at IS NULL
     WHERE t.id = p_thread AND t.deleted_at IS NULL;
    IF o_house_id IS NULL THEN
        o_status := 'no_such_thread';
        RETURN;
    ELSIF v_role IS NULL THEN
        o_status := 'not_a_member';
        RETURN;
    ELSIF NOT v_role = ANY (p_roles) THEN
        o_status := 'role';
        RETURN;
    END IF;

    SELECT e.thread_id, e.request_hash INTO v_existing_thread, v_existing_hash
      FROM appliance.thread_entries e WHERE e.id = p_id;
    IF v_existing_thread IS NOT NULL THEN
        o_status := CASE WHEN v_existing_thread = p_thread AND v_existing_hash = p_hash THEN 'retry'
                         ELSE 'conflict' END;
        RETURN;
    END IF;

    INSERT INTO appliance.thread_entries AS e (id, thread_id, house_id, author_id, message, request_hash, state,
                                               floor_offset)
    VALUES (p_id, p_thread, o_house_id, p_author, jsonb_set(p_message, '{author,kind}', to_jsonb(v_kind)), p_hash,
            'pending', coalesce((SELECT f.next_offset FROM appliance.thread_entries f
                                  WHERE f.thread_id = p_thread AND f.state = 'appended'
                                  ORDER BY f.next_offset COLLATE "C" DESC LIMIT 1), '-1'))
    ON CONFLICT (id) DO NOTHING
    RETURNING e.message INTO o_message;
    IF o_message IS NULL THEN
        o_status := 'busy';
        RETURN;
    END IF;

    IF cardinality(p_mentions) > 0 THEN
        -- One statement, so the activations and the unknown names come from one look at the house's agents.
        WITH named AS (
            SELECT n.name, n.ord, a.id AS agent_id
              FROM unnest(p_mentions) WITH ORDINALITY AS n (name, ord)
              LEFT JOIN public.agents a ON a.house_id = o_house_id AND lower(a.name) = lower(n.name)
                                       AND a.deleted_at IS NULL),
        activations AS (
            INSERT INTO appliance.outbox (entry_id, thread_id, house_id, agent_name, agent_id, mentioned_by, state,
                                          last_error, finished_at)
            SELECT p_id, p_thread, o_house_id, named.name, named.agent_id, p_author,
                   CASE WHEN named.agent_id IS NULL THEN 'gave_up' ELSE 'held' END,
                   CASE WHEN named.agent_id IS NULL THEN 'unknown agent' END,
                   CASE WHEN named.agent_id IS NULL THEN now() END
              FROM named ORDER BY named.ord
            RETURNING 1)
        SELECT coalesce(array_agg(named.name ORDER BY named.ord) FILTER (WHERE named.agent_id IS NULL), '{}')
          INTO v_unknown FROM named;
        v_unknown_json := coalesce((SELECT string_agg('"' || u.name || '"', ',' ORDER BY u.ord)
                                      FROM unnest(v_unknown) WITH ORDINALITY AS u (name, ord)), '');
    ELSE
        -- No mention: no activation and no unknown name, what the statements above find for an empty list.
        v_unknown := '{}';
    END IF;

    PERFORM audit.append_event(
        p_actor, 'thread.entry.append', o_house_id, p_subject,
        p_detail || jsonb_build_object('unknown_mentions', to_jsonb(v_unknown)),
        p_audit[1] || '[' || v_unknown_json || ']' || p_audit[2] || o_house_id::text || p_audit[3],
        p_middle);
    o_status := 'recorded';
END
$$;

REVOKE ALL ON FUNCTION appliance.record_entry_flat(boolean, boolean, uuid[], text[], bigint, uuid, uuid, uuid, jsonb,
                                                   text, text[], text[], text, text, jsonb, text[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION appliance.record_entry_flat(boolean, boolean, uuid[], text[], bigint, uuid, uuid, uuid,
                                                      jsonb, text, text[], text[], text, text, jsonb, text[], text)
    TO gateway;

-- The older entry points, for gateways that still call them: the same work, through the one body above.
CREATE OR REPLACE FUNCTION appliance.record_entry(
    p_key bigint, p_id uuid, p_thread uuid, p_author uuid, p_message jsonb, p_hash text, p_roles text[],
    p_mentions text[], p_actor text, p_subject text, p_detail jsonb, p_audit text[], p_middle text,
    OUT o_status text, OUT o_house_id uuid, OUT o_message jsonb)
    LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.o_status, r.o_house_id, r.o_message
      FROM appliance.record_entry_flat(true, false, '{}', '{}', p_key, p_id, p_thread, p_author, p_message, p_hash,
                                       p_roles, p_mentions, p_actor, p_subject, p_detail, p_audit, p_middle) r
$$;

CREATE OR REPLACE FUNCTION appliance.try_record_entry(
    p_key bigint, p_id uuid, p_thread uuid, p_author uuid, p_message jsonb, p_hash text, p_roles text[],
    p_mentions text[], p_actor text, p_subject text, p_detail jsonb, p_audit text[], p_middle text,
    OUT o_status text, OUT o_house_id uuid, OUT o_message jsonb)
    LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.o_status, r.o_house_id, r.o_message
      FROM appliance.record_entry_flat(false, false, '{}', '{}', p_key, p_id, p_thread, p_author, p_message, p_hash,
                                       p_roles, p_mentions, p_actor, p_subject, p_detail, p_audit, p_middle) r
$$;

CREATE OR REPLACE FUNCTION appliance.try_record_entry_after(
    p_finish boolean, p_done uuid[], p_offsets text[],
    p_key bigint, p_id uuid, p_thread uuid, p_author uuid, p_message jsonb, p_hash text, p_roles text[],
    p_mentions text[], p_actor text, p_subject text, p_detail jsonb, p_audit text[], p_middle text,
    OUT o_status text, OUT o_house_id uuid, OUT o_message jsonb)
    LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.o_status, r.o_house_id, r.o_message
      FROM appliance.record_entry_flat(false, p_finish, p_done, p_offsets, p_key, p_id, p_thread, p_author,
                                       p_message, p_hash, p_roles, p_mentions, p_actor, p_subject, p_detail, p_audit,
                                       p_middle) r
$$;
