"""What `appliance status` shows about a tenant's sync engine: its slot's retained WAL and lag, and shapes.

    >>> sync_status(dsn, tenant.sync.slot, tenant.sync_data)
    {'slot': {'exists': True, 'wal_status': 'reserved', 'retained_wal_bytes': 16384, ...}, 'shapes': 12, ...}

Reads the slot through Postgres and the shape count from the engine's registry files (without taking the
registry's lock, so it works while the engine runs). Never raises for an unreachable database: the fact that
it is unreachable is part of the answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from appliance.sync.registry import count_shapes
from appliance.sync.replication import slot_health


def shape_count(data_dir: Path) -> int | None:
    """Shapes in the engine's registry (shapes.json and its journal), or None when there is none yet."""
    return count_shapes(data_dir)


def sync_status(dsn: str, slot: str, data_dir: Path) -> dict[str, Any]:
    """{'healthy', 'slot': {exists, wal_status, retained_wal_bytes, confirmed_flush_lag_bytes, active},
    'shapes', 'detail'}: healthy when the slot exists, is not lost, and a walsender streams from it."""
    shapes = shape_count(data_dir)
    try:
        health = slot_health(dsn, slot)
    except psycopg.Error as exc:
        return {"healthy": False, "slot": None, "shapes": shapes, "detail": f"cannot query the slot: {exc}".strip()}
    slot_facts = health._asdict()
    healthy = health.exists and health.wal_status != "lost" and health.active
    if not health.exists:
        detail = f"replication slot {slot} does not exist"
    elif health.wal_status == "lost":
        detail = f"replication slot {slot} was invalidated (the engine rotates every shape)"
    else:
        retained = health.retained_wal_bytes or 0
        lag = health.confirmed_flush_lag_bytes or 0
        detail = (
            f"slot {slot} {health.wal_status}, {'streaming' if health.active else 'NOT streaming'}, "
            f"retains {retained / 1048576:.1f} MiB WAL, lag {lag / 1024:.0f} KiB, {shapes or 0} shapes"
        )
    return {"healthy": healthy, "slot": slot_facts, "shapes": shapes, "detail": detail}
