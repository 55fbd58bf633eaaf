"""The tenant's database schema: the versioned SQL migrations (migrations/NNNN_name.sql: tables, functions and
every GRANT) and their runner with the sync publication (migrate.py).

Its own package because every component reads this schema, not only the gateway: the deploy applies it
(`appliance host schema`, appliance/host/postgres.py), the audit shipper and the backups read its tables.
Applied migrations are recorded by name and checksum in `appliance.schema_migrations`: a file here is never
renamed or edited once released; a change is a new file.
"""
