"""TanStack DB's Electric collection: awaitTxId resolves for the txid a write returns (the gateway's write path
returns `pg_current_xact_id()::xid::text`), through a change's `txids` and through `snapshot-end`."""

from __future__ import annotations

from tests.support.pg import PgCluster
from tests.support.sync import NodeProcess, SyncServer, execute, write_returning_txid


def collection(server: SyncServer, table: str) -> NodeProcess:
    return NodeProcess("await_txid.mjs", {"url": server.url, "table": table, "secret": server.secret, "timeout": 8000})


def test_await_txid_resolves_through_live_txids(pg_module: PgCluster, server: SyncServer, table_name: str) -> None:
    execute(pg_module.dsn, f"CREATE TABLE {table_name} (id int PRIMARY KEY, name text)")
    client = collection(server, table_name)
    try:
        ready = client.until(lambda e: e["event"] == "ready")
        assert ready["size"] == 0
        txid = write_returning_txid(pg_module.dsn, f"INSERT INTO {table_name} VALUES (1, 'one')")
        client.send(str(txid))
        result = client.until(lambda e: e["event"] == "txid")
        assert result == {**result, "txid": txid, "resolved": True, "size": 1}
    finally:
        client.close()


def test_await_txid_resolves_through_snapshot_end(pg_module: PgCluster, server: SyncServer, table_name: str) -> None:
    execute(pg_module.dsn, f"CREATE TABLE {table_name} (id int PRIMARY KEY, name text)")
    execute(pg_module.dsn, f"CREATE TABLE {table_name}_other (id int PRIMARY KEY)")
    # Committed before the shape exists, and writing only another table: no change of this shape carries
    # the txid, so only the snapshot's visibility (xmin/xmax/xip_list) can resolve it.
    txid = write_returning_txid(pg_module.dsn, f"INSERT INTO {table_name}_other VALUES (1)")
    client = collection(server, table_name)
    try:
        client.until(lambda e: e["event"] == "ready")
        client.send(str(txid))
        result = client.until(lambda e: e["event"] == "txid")
        assert result["resolved"] is True, result
        # A txid from the future is not visible anywhere yet: awaitTxId must not resolve it.
        client.send(str(txid + 1000))
        pending = client.until(lambda e: e["event"] == "txid")
        assert pending["resolved"] is False
    finally:
        client.close()
