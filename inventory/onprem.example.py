"""On-prem example: one tenant per host over SSH, and a separate vault host running the object store.

Copy to inventory/onprem.py, set the addresses, then:
    pyinfra -y inventory/onprem.py deploy.py                      # everything
    pyinfra -y inventory/onprem.py deploy.py --limit tenant-a     # one tenant host

The vault host keeps the Object Lock store outside the tenant hosts' trust boundary: root on a tenant host
cannot destroy shipped audit batches. No secret belongs in this file; they are generated on the hosts.
"""

_ssh = {"ssh_user": "root", "ssh_key": "~/.ssh/appliance_ed25519"}

vault = [
    (
        "vault.internal",
        {
            **_ssh,
            "ssh_hostname": "10.10.0.10",
            # The store listens on the vault's LAN address so tenant hosts can reach it (TLS, per-tenant keys).
            "objectstore": {"mode": "embedded", "bind_address": "10.10.0.10", "dns_name": "vault.internal"},
        },
    ),
]

tenant_hosts = [
    (
        "tenant-a.internal",
        {
            **_ssh,
            "ssh_hostname": "10.10.0.21",
            "objectstore_host": "vault.internal",
            "tenants": {"acme": {"slot": 1, "audit": {"retention_days": 2555}}},
        },
    ),
    (
        "tenant-b.internal",
        {
            **_ssh,
            "ssh_hostname": "10.10.0.22",
            "objectstore_host": "vault.internal",
            "tenants": {"globex": {"slot": 1, "postgres": {"shared_buffers": "512MB"}}},
        },
    ),
]
