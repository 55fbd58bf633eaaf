"""The appliance deploy: `pyinfra -y inventory/local.py deploy.py`.

Per host: bootstrap (packages, venv, streams server, supervisord), the embedded object store where the host
runs it, then one stack per tenant on its own substrate. `--data only_tenants=acme` deploys one tenant;
`--limit <host>` one host.
"""

from pyinfra import host, inventory
from pyinfra.facts.server import Which

from appliance.deploys.backup import tenant_audit_and_backup
from appliance.deploys.bootstrap import host_bootstrap
from appliance.deploys.facts import (
    Accounts,
    DockerServerVersion,
    InitProcess,
    appliance_facts_key,
    plan_facts,
    record_accounts,
    start_early,
)
from appliance.deploys.firewall import port_firewall
from appliance.deploys.frontdoor import frontdoor_base, host_frontdoor, remove_frontdoor
from appliance.deploys.objectstore import (
    host_objectstore,
    store_name_resolves,
    tenant_objectstore,
    vault_ca,
    vault_drops_rotated_keys,
    vault_served_tenants,
)
from appliance.deploys.plan import all_hosts_reach, known_to_inspect, resolve, selected_tenants
from appliance.deploys.source import source_digest
from appliance.deploys.tenant import record_deploy, tenant_stack
from appliance.supervision import detect

known_to_inspect(__file__)
# What the plan needs of the host, asked in one command: the operations' facts come later, in one more.
docker_version, init_process, accounts, npm = plan_facts(
    (DockerServerVersion, {}), (InitProcess, {}), (Accounts, {}), (Which, {"command": "npm"})
)
config = resolve(host, inventory, docker_engine=bool(docker_version), source_digest=source_digest())
manager = detect(config.common.service_manager) if config.common.service_manager != "auto" else (
    "systemd" if init_process == "systemd" else "supervisor"
)
record_accounts(config, accounts)
# The host's own report (a Python start and a round of Postgres logins and S3 requests there: about a second) starts
# now, in the background there, while the rest of this file is read; the operations read it as they read their
# other facts (facts.py). The other slow ones (supervisorctl, weed: a fifth of a second each) wait for the snapshot,
# when the controller has nothing else to do: run now they would only slow this down on a busy host.
start_early(appliance_facts_key(config))

host_bootstrap(config=config, manager=manager, npm=bool(npm))
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
# A tenant host that rotated its S3 keys uses the new pairs now (tenant_objectstore above): the vault drops the old.
all_hosts_reach(name="Every host: tenants use their current keys", step="every tenant uses its current S3 keys")
if config.served_tenants:
    vault_drops_rotated_keys(config=config)
if config.runs_frontdoor:
    # Every tenant of the host, selected or not: the front door routes to all of them.
    host_frontdoor(config=config, manager_name=manager)
else:
    remove_frontdoor(config=config)
if config.common.port_firewall:
    port_firewall(name="Loopback port ownership rules (nftables)", config=config)
