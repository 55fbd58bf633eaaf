"""The tenant's identity plane: its embedded OIDC provider (a supervised Node service built on oidc-provider,
see roles/identity/files/) and the people it knows (`appliance user ...`)."""
