"""pyinfra deploys, one module per role; `deploy.py` at the top of the repository strings them together.

Each deploy reads a `HostConfig`/`TenantConfig` (appliance.config), takes its settings from
roles/<role>/defaults and its files from roles/<role>/templates, and decides from facts what to change.
"""
