"""Sizes the sync engine's parts agree on, with no imports, so the CLI can name them without loading psycopg."""

from __future__ import annotations

from typing import Final

# Electric's ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD default: a snapshot chunk, and a response read from the log,
# end near this many bytes of messages (the setting is sync.chunk_bytes / `appliance sync serve --chunk-bytes`).
CHUNK_BYTES: Final = 10 * 1024 * 1024
