"""Backup, restore and drills against real pgBackRest, Postgres and the embedded store over TLS."""
