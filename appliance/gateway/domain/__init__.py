"""What the gateway decides and keeps, apart from HTTP: who may do what (access, access_cache), how writes and
reads are audited (auditlog), thread entries and their groups (entries, entry_groups) and the mention outbox
(outbox). The routes under api/ call these; these never import from api/."""
