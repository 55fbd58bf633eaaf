"""The tenant gateway: the only door to a tenant's data (auth, shapes, writes, thread streams, entries, dispatch).

Entry points: `create_app(tenant)` (main.py), `gateway_service` (service.py), `rotate_signing_key`
(core/security.py). The activation contract for agent workers is in ACTIVATION.md. The tenant's schema, which
the gateway reads and writes, is appliance/tenantdb.

While serving, every database access goes through asyncpg (`core/db.py`: prepared statements, binary codecs,
no Python-level query conversion on the request path); the schema's migrations (appliance/tenantdb/migrate.py)
run at deploy time on psycopg, like the CLI and replication, where per-statement CPU does not matter.
"""
