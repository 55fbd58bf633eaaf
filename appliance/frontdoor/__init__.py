"""The host's front door: Debian's Caddy terminating TLS for every tenant's hostname and routing each to that
tenant's gateway only (its front-door socket). Config in roles/frontdoor; CA and certificates in tls.py; the
Caddyfile in caddyfile.py; the supervised process in service.py; health in status.py."""
