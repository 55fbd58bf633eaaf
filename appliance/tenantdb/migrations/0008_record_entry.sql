-- Recording a thread entry in one statement (step 2 of appliance/gateway/entries.py): the entry lock, the
-- access checks, the entry row, its outbox rows and its audit event, committed together in one round trip
-- instead of three, with the audit chain's head locked only for the last statement and the commit.
--
-- The entry lock is a session advisory lock: it outlives this statement's transaction (even a rolled-back
-- one) until the gateway releases it after the stream append. In READ COMMITTED every statement of a
-- plpgsql function takes a fresh snapshot, so the reads after the lock see whatever its previous holder
-- committed.
--
-- The audit event's canonical JSON is completed here around the two values only the database knows: the
-- mentions that name no agent of the house (agent names are [A-Za-z0-9_-], so their canonical JSON is the
-- name in quotes) and the thread's house:
--   p_audit[1] = '{"action":…,"actor":…,"detail":{…,"unknown_mentions":'
--   p_audit[2] = '},"house_id":"'
--   p_audit[3] = '","seq":'
-- then audit.append_event (0006) adds the seq, p_middle and the time and hashes it as for every event.
--
-- o_status: 'recorded' (o_message is what to append), 'retry' (this very request was recorded before),
-- 'conflict' (the id is another entry's), 'busy' (the id was just recorded under a colliding lock key), or a
-- refusal: 'no_such_thread', 'not_a_member', 'role' (the caller's role may not post this kind; o_house_id set).
CREATE FUNCTION appliance.record_entry(
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
BEGIN
    -- The audit text below relies on it (and the gateway only sends names its mention pattern found).
    IF EXISTS (SELECT FROM unnest(p_mentions) n WHERE n !~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$') THEN
        RAISE EXCEPTION 'record_entry: a mention is not an agent name' USING ERRCODE = 'data_exception';
    END IF;
    PERFORM pg_advisory_lock(p_key);
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

    PERFORM audit.append_event(
        p_actor, 'thread.entry.append', o_house_id, p_subject,
        p_detail || jsonb_build_object('unknown_mentions', to_jsonb(v_unknown)),
        p_audit[1] || '[' || coalesce((SELECT string_agg('"' || u.name || '"', ',' ORDER BY u.ord)
                                         FROM unnest(v_unknown) WITH ORDINALITY AS u (name, ord)), '') || ']'
                   || p_audit[2] || o_house_id::text || p_audit[3],
        p_middle);
    o_status := 'recorded';
END
$$;

REVOKE ALL ON FUNCTION appliance.record_entry(bigint, uuid, uuid, uuid, jsonb, text, text[], text[], text, text,
                                              jsonb, text[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION appliance.record_entry(bigint, uuid, uuid, uuid, jsonb, text, text[], text[], text,
                                                 text, jsonb, text[], text) TO gateway;
