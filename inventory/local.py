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
        },
    ),
]
