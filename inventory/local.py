"""The embedded default: this machine (`@local`) with two demo tenants and the object store beside them.

Deploy: pyinfra -y inventory/local.py deploy.py
"""

local = [
    (
        "@local",
        {
            "tenants": {
                "acme": {"slot": 1},
                "globex": {"slot": 2},
            },
            "objectstore": {"mode": "embedded"},
            # This demo box answers on loopback: https://acme.appliance.internal (with --resolve, or an
            # /etc/hosts line, and the CA from `appliance frontdoor ca`). Give an address here to publish.
            "frontdoor": {"bind_address": "127.0.0.1"},
        },
    ),
]
