-- What decides access, announced when it changes (appliance/gateway/access_cache.py).
--
-- The gateway remembers each principal's memberships, which threads are live in which house and which API keys
-- are live, so that a read needs no round trip to Postgres. Each change to those facts is announced on channel
-- `access_changed` at commit, and every gateway process forgets what the change touched:
--   p:<principal id>  a membership of that principal was added, changed or removed
--   t:<thread id>     a thread was deleted or moved
--   k:<api key id>    an API key was revoked or changed
--   *                 a house was deleted, or a table truncated: forget everything
-- Inserts of threads and API keys announce nothing: the gateway never remembers that something does not exist.
-- Postgres folds identical notifications of one transaction into one.
CREATE FUNCTION appliance.notify_access_changed() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' OR TG_TABLE_NAME = 'houses' THEN
        PERFORM pg_notify('access_changed', '*');
    ELSIF TG_TABLE_NAME = 'members' THEN
        IF TG_OP <> 'DELETE' THEN
            PERFORM pg_notify('access_changed', 'p:' || NEW.principal_id::text);
        END IF;
        IF TG_OP <> 'INSERT' THEN
            PERFORM pg_notify('access_changed', 'p:' || OLD.principal_id::text);
        END IF;
    ELSIF TG_TABLE_NAME = 'threads' THEN
        PERFORM pg_notify('access_changed', 't:' || OLD.id::text);
    ELSIF TG_TABLE_NAME = 'api_keys' THEN
        PERFORM pg_notify('access_changed', 'k:' || OLD.id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER members_access_changed AFTER INSERT OR UPDATE OR DELETE ON public.members
    FOR EACH ROW EXECUTE FUNCTION appliance.notify_access_changed();
CREATE TRIGGER houses_access_changed AFTER UPDATE OF deleted_at, id OR DELETE ON public.houses
    FOR EACH ROW EXECUTE FUNCTION appliance.notify_access_changed();
CREATE TRIGGER threads_access_changed AFTER UPDATE OF deleted_at, house_id, id OR DELETE ON public.threads
    FOR EACH ROW EXECUTE FUNCTION appliance.notify_access_changed();
-- Not on last_used_at: every token exchange touches it.
CREATE TRIGGER api_keys_access_changed AFTER UPDATE OF deleted_at, expires_at, principal_id, id OR DELETE
    ON public.api_keys FOR EACH ROW EXECUTE FUNCTION appliance.notify_access_changed();
CREATE TRIGGER members_truncated AFTER TRUNCATE ON public.members
    FOR EACH STATEMENT EXECUTE FUNCTION appliance.notify_access_changed();
CREATE TRIGGER houses_truncated AFTER TRUNCATE ON public.houses
    FOR EACH STATEMENT EXECUTE FUNCTION appliance.notify_access_changed();
CREATE TRIGGER threads_truncated AFTER TRUNCATE ON public.threads
    FOR EACH STATEMENT EXECUTE FUNCTION appliance.notify_access_changed();
CREATE TRIGGER api_keys_truncated AFTER TRUNCATE ON public.api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION appliance.notify_access_changed();
