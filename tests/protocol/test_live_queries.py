"""TanStack DB live queries over @tanstack/electric-db-collection in its 'on-demand' and 'progressive' sync
modes (the ones that load only what a query needs, through subset snapshots) against the engine: a query with
where, orderBy and limit gets exactly its rows, then follows live inserts, updates and deletes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.pg import PgCluster
from tests.support.sync import NodeProcess, SyncServer, execute

ROWS = 200


def make_ranked(dsn: str, table: str) -> None:
    execute(
        dsn,
        f"CREATE TABLE {table} (id int PRIMARY KEY, rank int NOT NULL, title text NOT NULL)",
        f"INSERT INTO {table} SELECT g, g, 'item ' || g FROM generate_series(1, {ROWS}) g",
    )


def live_query(server: SyncServer, table: str, sync_mode: str, **options: Any) -> NodeProcess:
    return NodeProcess("live_query.mjs", {
        "url": server.url, "table": table, "secret": server.secret, "syncMode": sync_mode,
        "where": {"column": "rank", "op": "gt", "value": 150}, "orderBy": {"column": "rank", "direction": "desc"},
        "limit": 5, **options,
    })


def ids(event: dict[str, Any]) -> list[int]:
    return [row["id"] for row in event["rows"]]


@pytest.mark.parametrize("subset_method", ["GET", "POST"])
def test_on_demand_loads_only_the_querys_rows_then_follows_changes(
    pg_module: PgCluster, server: SyncServer, table_name: str, subset_method: str
) -> None:
    make_ranked(pg_module.dsn, table_name)
    query = live_query(server, table_name, "on-demand", subsetMethod=subset_method)
    try:
        ready = query.until(lambda e: e["event"] == "rows" and len(e["rows"]) == 5, what="the first rows")
        assert ids(ready) == [200, 199, 198, 197, 196]
        assert ready["loaded"] < ROWS // 4, ready["loaded"]  # only what the query needed, not the table
        requests = ready["requests"]
        assert any(r["subset"] for r in requests) and all(r["status"] == 200 for r in requests), requests
        assert {r["log"] for r in requests} == {"changes_only"}  # the stream itself carries no rows

        execute(pg_module.dsn, f"INSERT INTO {table_name} VALUES (1000, 500, 'new top')")
        top = query.until(lambda e: e["event"] == "rows" and ids(e)[:1] == [1000], what="the insert")
        assert ids(top) == [1000, 200, 199, 198, 197]
        execute(pg_module.dsn, f"UPDATE {table_name} SET rank = 1 WHERE id = 199")  # moves out of the where
        execute(pg_module.dsn, f"DELETE FROM {table_name} WHERE id = 200")
        final = query.until(lambda e: e["event"] == "rows" and 199 not in ids(e) and 200 not in ids(e)
                            and len(e["rows"]) == 5, what="the update and the delete")
        assert ids(final) == [1000, 198, 197, 196, 195]
    finally:
        query.close()


def test_progressive_answers_from_a_subset_then_holds_the_whole_shape(
    pg_module: PgCluster, server: SyncServer, table_name: str
) -> None:
    make_ranked(pg_module.dsn, table_name)
    query = live_query(server, table_name, "progressive")
    try:
        first = query.until(lambda e: e["event"] == "rows" and len(e["rows"]) == 5, what="the first rows")
        assert ids(first) == [200, 199, 198, 197, 196]
        execute(pg_module.dsn, f"UPDATE {table_name} SET rank = 600 WHERE id = 3")
        moved = query.until(lambda e: e["event"] == "rows" and ids(e)[:1] == [3], what="the update")
        assert ids(moved) == [3, 200, 199, 198, 197]
        query.send("report")
        whole = query.until(lambda e: e["event"] == "rows" and e["loaded"] == ROWS, timeout=30,
                            what="the full sync behind the subset")
        assert ids(whole) == [3, 200, 199, 198, 197]
    finally:
        query.close()
