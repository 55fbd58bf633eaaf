-- A finished group's step 4 carried by the next group's record (appliance/gateway/domain/entry_groups.py, issue 21).
--
-- A group keeps its connection, which holds its entries' locks, until every entry has been appended; then one
-- statement marked them appended and released the locks (a round trip and a commit of its own). The gateway may
-- instead hand that connection to the next group to be recorded: the first entry of that group is recorded by
-- this function with p_finish set, which first releases every lock the session holds (only the finished
-- group's: the new group takes its own after this) and marks the finished group's entries appended, in the
-- new group's transaction. The locks go before that commit, as they did before the separate step 4's: an
-- attempt that takes one in between finds its entry still pending and completes it from the stream, and its
-- own update then waits for this transaction and finds nothing to do. If the transaction fails, the entries
-- stay pending, unlocked, for the gateway's own retry of step 4 or the recovery sweep.
--
-- Only groups whose entries mention nobody are handed on (they have no outbox rows to release), so this
-- function has no activations to release.
CREATE FUNCTION appliance.try_record_entry_after(
    p_finish boolean, p_done uuid[], p_offsets text[],
    p_key bigint, p_id uuid, p_thread uuid, p_author uuid, p_message jsonb, p_hash text, p_roles text[],
    p_mentions text[], p_actor text, p_subject text, p_detail jsonb, p_audit text[], p_middle text,
    OUT o_status text, OUT o_house_id uuid, OUT o_message jsonb)
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_finish THEN
        PERFORM pg_advisory_unlock_all();
        UPDATE appliance.thread_entries e SET state = 'appended', next_offset = d.next_offset, appended_at = now()
          FROM unnest(p_done, p_offsets) AS d (id, next_offset)
         WHERE e.id = d.id AND e.state = 'pending';
    END IF;
    SELECT r.o_status, r.o_house_id, r.o_message INTO o_status, o_house_id, o_message
      FROM appliance.try_record_entry(p_key, p_id, p_thread, p_author, p_message, p_hash, p_roles, p_mentions,
                                      p_actor, p_subject, p_detail, p_audit, p_middle) r;
END
$$;

REVOKE ALL ON FUNCTION appliance.try_record_entry_after(boolean, uuid[], text[], bigint, uuid, uuid, uuid, jsonb, text,
                                                        text[], text[], text, text, jsonb, text[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION appliance.try_record_entry_after(boolean, uuid[], text[], bigint, uuid, uuid, uuid, jsonb,
                                                           text, text[], text[], text, text, jsonb, text[], text)
    TO gateway;
