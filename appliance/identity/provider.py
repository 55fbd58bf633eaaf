"""The embedded OIDC provider of a tenant: where it is, who its clients are, and the runtime config its Node
process reads (roles/identity/files/server.mjs). Everything here derives from the tenant config model; the Node
side recomputes nothing.

Where it answers:
- browsers reach it through the front door, on the tenant's own hostname under IDP_PATH (the issuer is
  `https://<tenant host>/idp`): same certificate, same origin as the API, nothing new for the operator to name;
- the gateway reaches it on the tenant's loopback port (its back channel: discovery, JWKS, token endpoint),
  sending the public host in X-Forwarded-Host/-Proto so the URLs the provider prints are its public ones;
- the front door connects through a unix socket in the provider's front-door directory (its user and front
  door group only), and only there is X-Forwarded-For believed (login limits per client address).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from appliance.config import TenantConfig

IDP_PATH: Final = "/idp"
# The provider's clients: the gateway (confidential, the browser login's code flow) and command-line clients and
# agents (public, the device flow).
GATEWAY_CLIENT_ID: Final = "gateway"
CLI_CLIENT_ID: Final = "cli"
CALLBACK_PATH: Final = "/api/auth/callback"
SCOPES: Final = ("openid", "email", "profile", "offline_access")
# The provider's process, kept small (idle RSS under 80 MB, of which ~45 MB are the node binary's own pages): a
# heap cap keeps a leak loud, a small young generation and V8's size-over-speed choices keep the idle heap small
# (a login is a few requests, not a hot loop); two libuv threads (argon2 checks run there, and there are two
# cores) and one V8 helper thread; and each argon2 check's 19 MiB work buffer is mapped and unmapped on its own,
# where glibc would otherwise keep it per thread (measured: 163 MB after 40 logins without, ~80 MB with).
NODE_FLAGS: Final = ("--max-old-space-size=96", "--max-semi-space-size=1", "--optimize-for-size",
                     "--v8-pool-size=1")
NODE_ENVIRONMENT: Final = {"MALLOC_MMAP_THRESHOLD_": "131072", "UV_THREADPOOL_SIZE": "2", "NODE_ENV": "production"}
# The largest request body the provider takes (its forms and token requests are small); the front door refuses
# larger ones before they reach it.
IDENTITY_MAX_BODY_BYTES: Final = 16 * 1024


def identity_dir(tenant: TenantConfig) -> Path:
    """Where the provider's Node program is installed on the host (shared by every tenant of the host)."""
    return tenant.common.install_root / "identity"


def issuer_url(tenant: TenantConfig) -> str:
    """The embedded provider's issuer, exactly as tokens carry it (`iss`)."""
    if tenant.frontdoor.enabled:
        return tenant.url + IDP_PATH
    return internal_url(tenant)


def internal_url(tenant: TenantConfig) -> str:
    """The provider as the gateway reaches it on the host (its back channel)."""
    return f"http://{tenant.common.bind_address}:{tenant.port('identity')}{IDP_PATH}"


def api_resource(tenant: TenantConfig) -> str:
    """The audience of the provider's access tokens: this tenant's API (its public URL)."""
    return tenant.url


def socket_path(tenant: TenantConfig) -> Path:
    """The provider's socket for the front door, in a directory beside the gateway's with the same guard."""
    return tenant.identity_socket


def tenant_origins(tenant: TenantConfig) -> list[str]:
    """The tenant's own origins: its hostnames through the front door (HTTPS, its port)."""
    port = tenant.frontdoor.https_port
    suffix = "" if port == 443 else f":{port}"
    return [f"https://{name}{suffix}" for name in tenant.hostnames]


def callback_urls(tenant: TenantConfig) -> list[str]:
    return [origin + CALLBACK_PATH for origin in tenant_origins(tenant)]


def runtime_config(tenant: TenantConfig) -> dict[str, Any]:
    """What the Node provider reads at start (no secret values: paths of the secret files it reads)."""
    settings = tenant.identity
    return {
        "tenant": tenant.id,
        "issuer": issuer_url(tenant),
        "path_prefix": IDP_PATH,
        "listen": {
            "host": tenant.common.bind_address,
            "port": tenant.port("identity"),
            "socket": str(socket_path(tenant)) if tenant.frontdoor.enabled else "",
        },
        "database": {
            "host": tenant.common.bind_address,
            "port": tenant.port("postgres"),
            "user": "identity",
            "database": tenant.postgres.database,
            "password_file": str(tenant.secret_path("db_identity_password")),
        },
        "jwks_file": str(tenant.secret_path("identity_jwks")),
        "cookie_keys_file": str(tenant.secret_path("identity_cookie_keys")),
        "resource": api_resource(tenant),
        # Where a login may lead a browser after the provider's forms: the gateway's callback on the tenant's
        # origins, then the app's origin it returns to (the provider's Content-Security-Policy lists them).
        "form_action_origins": [*tenant_origins(tenant), *tenant.gateway.cors_origins],
        "clients": [
            {
                "client_id": GATEWAY_CLIENT_ID,
                "client_secret_file": str(tenant.secret_path("identity_gateway_client_secret")),
                "redirect_uris": callback_urls(tenant),
                "grant_types": ["authorization_code"],
                "token_endpoint_auth_method": "client_secret_basic",
                # The gateway verifies EdDSA (as for its own tokens): cheaper to sign and check than RS256, which
                # stays the default for any other client (OIDC's mandatory algorithm).
                "id_token_signed_response_alg": "EdDSA",
            },
            {
                "client_id": CLI_CLIENT_ID,
                "client_secret_file": "",
                "redirect_uris": [],
                "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
                "token_endpoint_auth_method": "none",
            },
        ],
        "scopes": list(SCOPES),
        "ttl_s": {
            "access_token": settings.access_token_ttl_s,
            "id_token": settings.access_token_ttl_s,
            "authorization_code": 60,
            "device_code": settings.device_code_ttl_s,
            "interaction": settings.login_ttl_s,
            "session": settings.session_ttl_s,
            "grant": settings.refresh_ttl_s,
            "refresh_token": settings.refresh_ttl_s,
            "setup_link": settings.setup_link_ttl_s,
        },
        "login": {
            "max_failures": settings.login_max_failures,
            "lockout_s": settings.login_lockout_s,
            "per_client_per_minute": settings.login_per_client_per_minute,
        },
        "argon2": {"memory_kib": settings.argon2_memory_kib, "time_cost": settings.argon2_time_cost,
                   "parallelism": 1},
    }


def write_runtime_config(tenant: TenantConfig, path: Path) -> None:
    """The runtime config, 0600, for the user who runs the provider (its own) only."""
    from appliance.objectstore.files import write_atomic

    write_atomic(path, (json.dumps(runtime_config(tenant), indent=1) + "\n").encode(), 0o600)


def runtime_config_path(tenant: TenantConfig) -> Path:
    return tenant.identity_data / "identity.json"
