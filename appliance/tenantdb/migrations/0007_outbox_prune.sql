-- Finished activations are deleted after gateway.outbox_retention_days (appliance/gateway/outbox.py, prune):
-- the outbox is a work queue, not a record; the audit trail keeps every mention and every give-up.
GRANT DELETE ON appliance.outbox TO gateway;
CREATE INDEX outbox_finished ON appliance.outbox (finished_at) WHERE state IN ('delivered', 'gave_up');
