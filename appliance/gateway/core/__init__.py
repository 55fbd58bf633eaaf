"""The gateway's core: settings, database pool, security (tokens, keys), errors, rate limits."""
