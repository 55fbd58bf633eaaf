"""The tenant's embedded OIDC provider (roles/identity/files), run for real."""
