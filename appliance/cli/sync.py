"""`appliance sync serve`: the embedded Electric-compatible sync engine, standalone or under the supervisor.

    appliance sync serve --database-url postgresql://sync@127.0.0.1:5432/app --port 3000 \\
        --secret-file /srv/t1/secrets/sync_secret --data-dir /srv/t1/sync

The supervised service passes `--secret-file` and `--database-url-file` so that no secret shows in the
process listing; `--secret` and `--database-url` are for running it by hand.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from appliance.sync.defaults import CHUNK_BYTES, LONG_POLL_TIMEOUT_MS, PUBLICATION, SLOT


def _from_file(path: Path | None, value: str | None, what: str) -> str | None:
    if path is None:
        return value
    if value is not None:
        raise click.UsageError(f"give --{what} or --{what}-file, not both")
    text = path.read_text().strip()
    if not text:
        raise click.UsageError(f"{path} is empty")
    return text


@click.group()
def sync() -> None:
    """The sync engine (Electric HTTP Shape API v1)."""


@sync.command()
@click.option("--database-url", help="Postgres URL of the sync role (REPLICATION + SELECT on synced tables).")
@click.option("--database-url-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--database-password-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File holding the role's password, merged into the URL (how the supervised service gets it).",
)
@click.option("--port", type=int, required=True, help="TCP port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--secret", help="The shape API secret clients pass as ?secret=.")
@click.option("--secret-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--insecure", is_flag=True, help="Serve without a secret (tests and local experiments only).")
@click.option(
    "--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Shapes and their logs."
)
@click.option(
    "--long-poll-timeout",
    "long_poll_ms",
    type=click.IntRange(100, 600_000),
    default=LONG_POLL_TIMEOUT_MS,
    show_default=True,
    help="Milliseconds a live request waits for changes.",
)
@click.option("--publication", default=PUBLICATION, show_default=True)
@click.option("--slot", default=SLOT, show_default=True)
@click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
@click.option(
    "--chunk-bytes",
    type=click.IntRange(1024, 1 << 30),
    default=CHUNK_BYTES,
    show_default=True,
    help="A response (snapshot chunk or log read) ends near this many bytes of messages: Electric's "
    "ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD, same default.",
)
@click.option(
    "--enable-shape-delete",
    is_flag=True,
    help="Answer DELETE /v1/shape, which drops a shape under every client reading it: for tests (Electric's "
    "ELECTRIC_ENABLE_INTEGRATION_TESTING). Without it DELETE is 405; deployed tenants never set it.",
)
def serve(
    database_url: str | None,
    database_url_file: Path | None,
    database_password_file: Path | None,
    port: int,
    host: str,
    secret: str | None,
    secret_file: Path | None,
    insecure: bool,
    data_dir: Path,
    long_poll_ms: int,
    publication: str,
    slot: str,
    log_level: str,
    enable_shape_delete: bool,
    chunk_bytes: int,
) -> None:
    """Run the sync engine in the foreground until SIGTERM/SIGINT."""
    from appliance.sync.server import DATABASE_URL_ENV, SECRET_ENV, SECRET_FILE_ENV

    dsn = _from_file(database_url_file, database_url, "database-url")
    if dsn is None:
        raise click.UsageError("--database-url or --database-url-file is required")
    if database_password_file is not None:
        from psycopg.conninfo import make_conninfo

        dsn = make_conninfo(dsn, password=database_password_file.read_text().strip())
    api_secret = _from_file(secret_file, secret, "secret")
    if api_secret is None and not insecure:
        raise click.UsageError("--secret or --secret-file is required (or --insecure)")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    environment = {**os.environ, DATABASE_URL_ENV: dsn, SECRET_ENV: api_secret or ""}
    if secret_file is not None:
        # The engine follows the file (appliance.secretfile): a rotated secret needs no restart.
        environment[SECRET_FILE_ENV] = str(secret_file.resolve())
    argv = [
        sys.executable,
        "-m",
        "appliance.sync.server",
        "--host",
        host,
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--long-poll-timeout",
        str(long_poll_ms),
        "--publication",
        publication,
        "--slot",
        slot,
        "--log-level",
        log_level,
        "--chunk-bytes",
        str(chunk_bytes),
        *(["--enable-shape-delete"] if enable_shape_delete else []),
    ]
    # Same PID, lean imports: the supervisor (and tests) keep managing the process they started.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, environment)
