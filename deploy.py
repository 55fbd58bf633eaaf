"""The appliance deploy: `pyinfra -y inventory/local.py deploy.py`.

Per host: bootstrap (packages, venv, streams server, supervisord), the embedded object store where the host
runs it, then one stack per tenant on its own substrate. `--data only_tenants=acme` deploys one tenant;
`--limit <host>` one host.
"""

from pyinfra import host, inventory

from appliance.deploys.backup import tenant_audit_and_backup
from appliance.deploys.bootstrap import host_bootstrap
from appliance.deploys.facts import DockerServerVersion, InitProcess
from appliance.deploys.firewall import port_firewall
from appliance.deploys.frontdoor import frontdoor_base, host_frontdoor, remove_frontdoor
from appliance.deploys.objectstore import (
    host_objectstore,
    store_name_resolves,
    tenant_objectstore,
    vault_ca,
    vault_served_tenants,
)
from appliance.deploys.plan import all_hosts_reach, resolve, selected_tenants
from appliance.deploys.source import tarball
from appliance.deploys.tenant import record_deploy, tenant_stack
from appliance.supervision import detect

config = resolve(
    host, inventory, docker_engine=bool(host.get_fact(DockerServerVersion)), source_digest=tarball()[1]
)
manager = detect(config.common.service_manager) if config.common.service_manager != "auto" else (
    "systemd" if host.get_fact(InitProcess) == "systemd" else "supervisor"
)

host_bootstrap(config=config, manager=manager)
if config.objectstore.mode == "embedded" and not config.objectstore.loopback:
    store_name_resolves(name=f"{config.objectstore.dns_name} resolves to the vault's store", config=config)
if config.runs_objectstore:
    host_objectstore(config=config, manager=manager)
if config.runs_frontdoor:
    # Before the tenants: each gateway's front-door socket directory belongs to the front door's group.
    frontdoor_base(config=config, manager_name=manager)
selected = [config.tenant(t) for t in selected_tenants(config, host.data.get("only_tenants"))]
for tenant in selected:
    tenant_stack(config=config, tenant=tenant, manager=manager)
# A vault host keeps the identities of other hosts' tenants: after every tenant host made its keys above.
all_hosts_reach(name="Every host: tenants' keys exist", step="every host's tenants have their keys")
if config.served_tenants:
    vault_served_tenants(config=config)
# A tenant host checks its buckets on the vault: after the vault made them for every tenant above.
all_hosts_reach(name="Every host: the vault keeps every tenant", step="the vault keeps every tenant's buckets")
if config.objectstore_host:
    vault_ca(name=f"Trust the CA of the vault host {config.objectstore_host}", config=config)
for tenant in selected:
    tenant_objectstore(config=config, tenant=tenant)
    tenant_audit_and_backup(config=config, tenant=tenant, manager=manager)
    record_deploy(config=config, tenant=tenant)
if config.runs_frontdoor:
    # Every tenant of the host, selected or not: the front door routes to all of them.
    host_frontdoor(config=config, manager_name=manager)
else:
    remove_frontdoor(config=config)
if config.common.port_firewall:
    port_firewall(name="Loopback port ownership rules (nftables)", config=config)
