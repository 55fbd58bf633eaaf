"""The tenant's audit trail: canonical JSON (canonical.py) and the hash chain in Postgres (chain.py)."""
