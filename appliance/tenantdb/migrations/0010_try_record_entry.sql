-- Recording entries in groups (appliance/gateway/entry_groups.py): record_entry (0008) behind a try-lock.
--
-- Entries that arrive together are recorded in one transaction on one connection. Inside it, an entry whose
-- lock another session holds (the same entry id in flight elsewhere) must not make the whole group wait while
-- the group's transaction holds the audit chain head: try_record_entry takes the entry lock only if it is free
-- and answers 'locked' otherwise, recording nothing; the gateway then records that entry on its own, waiting
-- for the lock as record_entry does.
--
-- Holding the lock, record_entry's own pg_advisory_lock returns at once (session locks stack); the group's
-- connection releases all of its locks together (pg_advisory_unlock_all) once its entries are appended.
CREATE FUNCTION appliance.try_record_entry(
    p_key bigint, p_id uuid, p_thread uuid, p_author uuid, p_message jsonb, p_hash text, p_roles text[],
    p_mentions text[], p_actor text, p_subject text, p_detail jsonb, p_audit text[], p_middle text,
    OUT o_status text, OUT o_house_id uuid, OUT o_message jsonb)
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pg_try_advisory_lock(p_key) THEN
        o_status := 'locked';
        RETURN;
    END IF;
    SELECT r.o_status, r.o_house_id, r.o_message INTO o_status, o_house_id, o_message
      FROM appliance.record_entry(p_key, p_id, p_thread, p_author, p_message, p_hash, p_roles, p_mentions, p_actor,
                                  p_subject, p_detail, p_audit, p_middle) r;
END
$$;

REVOKE ALL ON FUNCTION appliance.try_record_entry(bigint, uuid, uuid, uuid, jsonb, text, text[], text[], text, text,
                                                  jsonb, text[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION appliance.try_record_entry(bigint, uuid, uuid, uuid, jsonb, text, text[], text[], text,
                                                     text, jsonb, text[], text) TO gateway;
