"""The embedded provider's supervised service for one tenant (rendered by the deploy like every other spec)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from appliance.config import TenantConfig
from appliance.identity.provider import IDP_PATH, runtime_config
from appliance.servicespec import ServiceSpec, appliance_service


def identity_service(tenant: TenantConfig) -> ServiceSpec:
    # `appliance identity serve` writes the provider's runtime config and becomes the Node process (exec), so
    # the supervised pid is the provider's own and SIGTERM reaches it.
    spec = appliance_service(tenant, "identity", "serve", port=tenant.port("identity"), probe="http",
                             probe_path=f"{IDP_PATH}/.well-known/openid-configuration", stop_wait_s=15)
    # The provider reads its config at start: a change of it restarts the provider, and only it.
    digest = hashlib.sha256(repr(runtime_config(tenant)).encode()).hexdigest()[:16]
    return replace(spec, environment={**spec.environment, "APPLIANCE_IDENTITY_SETTINGS": digest})
