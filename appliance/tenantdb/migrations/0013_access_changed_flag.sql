-- The transaction that changes who may read what knows it did (appliance/gateway/domain/access.py).
--
-- 0012's triggers announce each change to other processes at commit. The gateway process that commits the
-- change itself must forget what it remembers before it answers, without waiting for its own notification; the
-- same triggers now also mark the transaction (a transaction-local setting), which the gateway reads just
-- before committing. One list of what affects access: the triggers of 0012.
CREATE OR REPLACE FUNCTION appliance.notify_access_changed() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM set_config('appliance.access_changed', 'on', true);
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
