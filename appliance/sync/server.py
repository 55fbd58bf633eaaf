"""The sync engine's process: `python -m appliance.sync.server --port N --data-dir DIR [...]`.

`appliance sync serve` validates its options and then replaces itself (same PID) with this module, so the
long-running process only imports what serving needs (not the whole operator CLI: ~17 MB less RSS). The
database URL and the secret arrive in the environment (APPLIANCE_SYNC_DATABASE_URL, APPLIANCE_SYNC_SECRET),
never on the command line, so they do not show in the process listing.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
from pathlib import Path
from types import FrameType
from typing import Final

import uvicorn

from appliance.sync import gcpolicy
from appliance.sync.defaults import CHUNK_BYTES, LONG_POLL_TIMEOUT_MS, PUBLICATION, SLOT
from appliance.sync.engine import EngineConfig, SyncEngine
from appliance.sync.http import ApiSettings, create_app

DATABASE_URL_ENV: Final = "APPLIANCE_SYNC_DATABASE_URL"
SECRET_ENV: Final = "APPLIANCE_SYNC_SECRET"
SECRET_FILE_ENV: Final = "APPLIANCE_SYNC_SECRET_FILE"


class _Server(uvicorn.Server):
    """Lets the engine answer its waiting long polls as soon as a shutdown signal arrives, so the graceful
    shutdown finishes them with a normal response instead of cancelling them."""

    def __init__(self, config: uvicorn.Config, engine: SyncEngine) -> None:
        super().__init__(config)
        self.engine = engine

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.engine.begin_shutdown()
        super().handle_exit(sig, frame)


def _raise_open_files_limit() -> None:
    """Every shape's log is an open file: take the hard limit (systemd's default soft limit is 1,024,
    which a few hundred shapes, plus connections, would exhaust)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        logging.getLogger(__name__).info("open files limit raised from %d to %d", soft, hard)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="appliance.sync.server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--long-poll-timeout", type=int, default=LONG_POLL_TIMEOUT_MS)
    parser.add_argument("--publication", default=PUBLICATION)
    parser.add_argument("--slot", default=SLOT)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--enable-shape-delete", action="store_true")
    parser.add_argument("--chunk-bytes", type=int, default=CHUNK_BYTES)
    args = parser.parse_args(argv)
    dsn = os.environ.pop(DATABASE_URL_ENV, None)
    if not dsn:
        parser.error(f"{DATABASE_URL_ENV} is not set")
    secret = os.environ.pop(SECRET_ENV, None) or None
    secret_file = os.environ.pop(SECRET_FILE_ENV, None) or None
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    args.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _raise_open_files_limit()
    engine = SyncEngine(EngineConfig(
        dsn=dsn, data_dir=args.data_dir, publication=args.publication, slot=args.slot, chunk_bytes=args.chunk_bytes
    ))
    app = create_app(engine, ApiSettings(
        secret=secret, secret_file=Path(secret_file) if secret_file else None,
        long_poll_timeout_ms=args.long_poll_timeout, allow_delete=args.enable_shape_delete,
        chunk_bytes=args.chunk_bytes,
    ))
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    logging.getLogger(__name__).info(
        "sync engine listening on http://%s:%d (data in %s)", args.host, args.port, args.data_dir
    )
    gcpolicy.install()
    _Server(config, engine).run()


if __name__ == "__main__":
    main()
