"""The gateway's HTTP layer: routes per resource (routes/), dependencies (deps.py)."""
