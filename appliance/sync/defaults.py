"""The values the sync engine runs with when not told otherwise, read from the `sync` role's settings
(roles/sync/defaults/main.yml, through `appliance.config.SyncSettings`): the one place they are stated. The
engine, `appliance sync serve`, the test servers and the benchmarks take them from here; a deployed tenant's
service passes its own settings on the command line (appliance/services.py).

Nothing here imports psycopg or the engine, so the CLI can name these without loading either.
"""

from __future__ import annotations

from typing import Final

from appliance.config import SyncSettings

_SETTINGS: Final = SyncSettings.defaults()

# Electric's ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD default: a snapshot chunk, and a response read from the log,
# end near this many bytes of messages (the setting is sync.chunk_bytes / `appliance sync serve --chunk-bytes`).
CHUNK_BYTES: Final[int] = _SETTINGS["chunk_bytes"]
# Electric's default: a live request with no new data answers up-to-date after this long.
LONG_POLL_TIMEOUT_MS: Final[int] = _SETTINGS["long_poll_timeout_ms"]
# The logical replication objects, named as Electric names them.
PUBLICATION: Final[str] = _SETTINGS["publication"]
SLOT: Final[str] = _SETTINGS["slot"]
