"""Operator actions in the audit trail: deploy, restore, key rotation, tenant destroy.

Called by the host-side code of those actions, as root, through the tenant's superuser connection (over the
tenant's socket, password from its secret file):

    seq = record_operator_action(tenant, "deploy", {"source_digest": host.source_digest})
    seq = record_operator_action(tenant, "tenant_destroy", {"reason": "offboarded"})
    ship_now(host, tenant, through_seq=seq)   # before destroying: the event must reach the store first

The event is `actor="operator"`, `action="operator.<action>"`, `subject="tenant:<id>"`, and its detail is the
caller's plus `operator: {host, os_user, sudo_user}` — who ran it, as far as this host can tell.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import time
from collections.abc import Mapping
from typing import Any, Final

import psycopg

from appliance.audit.canonical import canonical_json
from appliance.audit.chain import AuditEvent, append_event
from appliance.config import DB_SUPERUSER, HostConfig, TenantConfig

# The actions the appliance records; others are accepted (same naming rule) so new ones need no release here.
OPERATOR_ACTIONS: Final = ("deploy", "restore", "key_rotation", "tenant_destroy")
_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")


def operator_event(tenant: TenantConfig, action: str, detail: Mapping[str, Any] | None = None, *,
                   subject: str | None = None) -> AuditEvent:
    """The event recorded for `action` (about the tenant, or `subject`, e.g. the principal a token is for);
    ValueError for a bad name or a detail without a canonical form."""
    if not _ACTION.match(action) or len(action) > 100:
        raise ValueError(f"operator action {action!r} must be lowercase words joined by '.' or '_'")
    detail = dict(detail or {})
    if "operator" in detail:
        raise ValueError("detail key 'operator' is reserved for who ran the action")
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = str(os.geteuid())
    detail["operator"] = {"host": socket.gethostname(), "os_user": who, "sudo_user": os.environ.get("SUDO_USER")}
    canonical_json(detail)  # refuse floats, NULs, ... here, with a clear message, not in the transaction
    return AuditEvent(actor="operator", action=f"operator.{action}", subject=subject or f"tenant:{tenant.id}",
                      detail=detail)


def record_operator_action(tenant: TenantConfig, action: str, detail: Mapping[str, Any] | None = None,
                           *, subject: str | None = None, conn: psycopg.Connection[Any] | None = None) -> int:
    """Append an operator action to the tenant's chain; returns its seq. Uses `conn` if given (to make the event
    part of the caller's transaction), else connects as the tenant's superuser."""
    event = operator_event(tenant, action, detail, subject=subject)
    if conn is not None:
        return append_event(conn, event)[0]
    from appliance.pg import connect

    with connect(tenant, DB_SUPERUSER) as own:
        return append_event(own, event)[0]


def ship_now(host: HostConfig, tenant: TenantConfig, through_seq: int | None = None, *,
             timeout_s: float = 120.0) -> int:
    """Make sure events through `through_seq` (all committed ones when None) are in the store; returns the
    watermark. Ships them here when no shipper runs; otherwise waits for the running one (which holds the
    single-shipper lock). Raises TimeoutError when they are not shipped in time (e.g. the store is down), and
    Halt when shipping cannot go on without an operator (appliance/audit/shipper.py)."""
    from appliance.audit.db import connect_audit, watermark
    from appliance.audit.shipper import Shipper, ShipperBusy
    from appliance.audit.store import StoreError, audit_client

    deadline = time.monotonic() + timeout_s
    with connect_audit(tenant) as conn:
        target = watermark(conn).head_seq if through_seq is None else through_seq
    shipper = Shipper(tenant, audit_client(host, tenant), lambda: connect_audit(tenant))
    try:
        while True:
            problem = ""
            try:
                shipped = shipper.drain(timeout_s=max(1.0, deadline - time.monotonic()))
            except (ShipperBusy, StoreError) as exc:
                # Busy: the running shipper ships them. Store error: retry until the deadline, then say why.
                problem = "" if isinstance(exc, ShipperBusy) else f" ({exc})"
                with connect_audit(tenant) as conn:
                    shipped = watermark(conn).shipped_seq
            if shipped >= target:
                return shipped
            if time.monotonic() > deadline:
                raise TimeoutError(f"audit events of {tenant.id} shipped through seq {shipped}, not {target}, "
                                   f"after {timeout_s:.0f}s{problem}")
            time.sleep(0.2 if not problem else 1.0)
    finally:
        shipper.close()
