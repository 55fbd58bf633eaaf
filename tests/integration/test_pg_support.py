import psycopg


def test_throwaway_cluster_accepts_scram_logins(pg):
    with psycopg.connect(pg.conninfo()) as conn:
        assert conn.execute("show wal_level").fetchone() == ("logical",)
