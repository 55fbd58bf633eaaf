"""The gateway as a relying party of OIDC issuers: logins, sessions, issuer tokens, identity events."""
