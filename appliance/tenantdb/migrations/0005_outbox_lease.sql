-- Delivery leases of their own: a claimed activation is leased for a short time that its deliverer keeps
-- extending while the delivery runs, so a gateway killed mid-delivery hands its activations back within
-- seconds instead of after the whole delivery timeout. NULL: not being delivered.
ALTER TABLE appliance.outbox ADD COLUMN leased_until timestamptz;
