"""The tenant config model: every port, path and name derives from the tenant id and inventory data."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.config import (
    PORTED_COMPONENTS,
    TENANT_ROLES,
    TENANT_SECRETS,
    CommonSettings,
    ConfigError,
    host_config,
    inventory_configs,
    load_host_config,
)
from appliance.roles import role_defaults


def _local(**tenants: Any) -> dict[str, Any]:
    return {"tenants": tenants or {"acme": {"slot": 1}, "globex": {"slot": 2}}}


def test_every_role_default_maps_to_a_typed_setting_and_back() -> None:
    for role, model in TENANT_ROLES.items():
        defaults = role_defaults(role)
        assert set(defaults) == {f"{role}_{field}" for field in model.model_fields}, role
    assert set(CommonSettings.defaults()) == set(CommonSettings.model_fields)


def test_tenant_paths_ports_and_names_derive_from_id_and_slot() -> None:
    host = host_config("@local", _local())
    acme = host.tenant("acme")
    assert acme.user == "tenant-acme"
    assert str(acme.root) == "/srv/appliance/tenants/acme"
    assert acme.pg_data.is_relative_to(acme.root) and acme.secrets_dir.is_relative_to(acme.root)
    assert acme.audit_bucket == "acme-audit" and acme.backup_bucket == "acme-backup"
    assert acme.port("postgres") == 20010 and acme.port("streams") == 20011
    assert host.tenant("globex").port("postgres") == 20020
    assert all(acme.secret_path(name).parent == acme.secrets_dir for name in TENANT_SECRETS)


def test_per_tenant_overrides_apply_only_to_that_tenant() -> None:
    host = host_config("@local", _local(acme={"slot": 1, "audit": {"retention_days": 1}}, globex={"slot": 2}))
    assert host.tenant("acme").audit.retention_days == 1
    assert host.tenant("globex").audit.retention_days == role_defaults("audit")["audit_retention_days"]


def test_explicit_port_overrides_the_slot_block() -> None:
    host = host_config("@local", _local(acme={"slot": 1, "ports": {"gateway": 8443}}))
    assert host.tenant("acme").port("gateway") == 8443


@pytest.mark.parametrize(
    ("tenant_id", "message"),
    [
        ("../etc", "lowercase letters"),
        ("a/b", "lowercase letters"),
        ("Acme", "lowercase letters"),
        ("acme_corp", "lowercase letters"),
        ("1acme", "lowercase letters"),
        ("acme-", "lowercase letters"),
        ("a", "2 to 24"),
        ("a" * 25, "2 to 24"),
    ],
)
def test_invalid_tenant_ids_are_refused_by_name(tenant_id: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        host_config("@local", {"tenants": {tenant_id: {"slot": 1}}})
    assert repr(tenant_id) in str(err.value)


def test_duplicate_port_names_both_owners() -> None:
    data = _local(acme={"slot": 1}, globex={"slot": 2, "ports": {"gateway": 20010}})
    with pytest.raises(ConfigError, match=r"port 20010 is used by both tenant acme postgres and tenant globex gateway"):
        host_config("@local", data)


def test_tenant_port_colliding_with_the_object_store_is_refused() -> None:
    data = {**_local(acme={"slot": 1, "ports": {"gateway": 8333}}), "objectstore": {"mode": "embedded"}}
    with pytest.raises(ConfigError, match="8333 is used by both objectstore s3 and tenant acme gateway"):
        host_config("@local", data)


def test_duplicate_slot_is_refused() -> None:
    with pytest.raises(ConfigError, match="both have slot 1"):
        host_config("@local", _local(acme={"slot": 1}, globex={"slot": 1}))


def test_unknown_settings_are_refused_not_ignored() -> None:
    with pytest.raises(ConfigError, match="max_conections"):
        host_config("@local", _local(acme={"slot": 1, "postgres": {"max_conections": 5}}))
    with pytest.raises(ConfigError, match="unknown host data"):
        host_config("@local", {**_local(), "tenant": {}})
    with pytest.raises(ConfigError, match="unknown components"):
        host_config("@local", _local(acme={"slot": 1, "ports": {"db": 30000}}))


def test_wrongly_typed_setting_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"tenant acme: audit.*retention_days"):
        host_config("@local", _local(acme={"slot": 1, "audit": {"retention_days": "forever"}}))


def test_missing_vault_host_is_refused() -> None:
    with pytest.raises(ConfigError, match="objectstore_host 'vault' is not a host of this inventory"):
        inventory_configs({"tenant-a": {"objectstore_host": "vault", "tenants": {"acme": {"slot": 1}}}})


def test_vault_host_must_run_the_store() -> None:
    hosts = {
        "vault": {"objectstore": {"mode": "external", "endpoint": "https://s3.example"}},
        "tenant-a": {"objectstore_host": "vault", "tenants": {"acme": {"slot": 1}}},
    }
    with pytest.raises(ConfigError, match="does not run the embedded store"):
        inventory_configs(hosts)


def test_tenant_ids_are_unique_across_hosts() -> None:
    hosts = {"a": {"tenants": {"acme": {"slot": 1}}}, "b": {"tenants": {"acme": {"slot": 1}}}}
    with pytest.raises(ConfigError, match="tenant acme is on both a and b"):
        inventory_configs(hosts)


def test_empty_inventory_is_refused() -> None:
    with pytest.raises(ConfigError, match="no hosts"):
        inventory_configs({})


def test_external_store_needs_https() -> None:
    with pytest.raises(ConfigError, match="https"):
        host_config("@local", {"objectstore": {"mode": "external", "endpoint": "http://s3.example"}})


def test_config_round_trips_through_host_json() -> None:
    host = host_config("@local", _local())
    again = type(host).model_validate_json(host.model_dump_json())
    assert again == host
    assert again.tenant("acme").ports == host.tenant("acme").ports
    assert set(host.tenant("acme").ports) == set(PORTED_COMPONENTS)


def test_a_host_json_from_before_a_setting_existed_loads_with_its_default(tmp_path: Any) -> None:
    host = host_config("@local", _local())
    data = json.loads(host.model_dump_json())
    for tenant in data["tenants"]:
        del tenant["gateway"]["outbox_retention_days"]
    (tmp_path / "host.json").write_text(json.dumps(data))
    loaded = load_host_config(tmp_path)
    assert loaded.tenant("acme").gateway.outbox_retention_days == role_defaults("gateway")[
        "gateway_outbox_retention_days"]


def test_a_host_json_naming_a_retired_setting_loads_without_it(tmp_path: Any) -> None:
    data = json.loads(host_config("@local", _local()).model_dump_json())
    for tenant in data["tenants"]:
        tenant["streams"]["server_version"] = "0.3.7"  # written when the streams version was a setting
    (tmp_path / "host.json").write_text(json.dumps(data))
    loaded = load_host_config(tmp_path)
    assert "server_version" not in loaded.tenant("acme").streams.model_dump()


def test_a_host_json_this_version_cannot_read_is_a_clear_error(tmp_path: Any) -> None:
    data = json.loads(host_config("@local", _local()).model_dump_json())
    data["tenants"][0]["gateway"]["setting_of_a_newer_version"] = 1
    (tmp_path / "host.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="another version's deploy; redeploy") as refused:
        load_host_config(tmp_path)
    assert "setting_of_a_newer_version" in str(refused.value)
