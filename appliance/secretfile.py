"""A secret as its file holds it now, for long-running readers: followed across rotations without a restart.

A leaf (standard library only): the sync engine's process, the agents and the gateway import it on their serving
paths. `appliance secret rotate` replaces a secret file by renaming a new one into place
(appliance.objectstore.files.write_atomic), so a changed inode or mtime is a new value. The two sides of a shared
secret notice it each on its own schedule (a reader that has not looked for `recheck_s` looks at its next use); the
side that checks keeps accepting the value it replaced until `grace_s` after the file changed (its mtime), and looks
at the file at once when given a value it does not know, so the side that presents it is never refused in
between, whichever side notices first; from then on the old value is refused, however late the checking side
noticed.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("appliance.secretfile")

RECHECK_S = 1.0
GRACE_S = 5.0


class SecretFile:
    def __init__(self, path: Path | str, *, recheck_s: float = RECHECK_S, grace_s: float = GRACE_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.recheck_s = recheck_s
        self.grace_s = grace_s
        self._now = clock
        self._signature = self._stat()
        self._value = self._read()
        # Wall-clock time (the file's mtime is): a clock step shifts one recheck or one grace period, no more.
        self._checked = self._now()
        self._previous: str | None = None
        self._previous_until = 0.0

    def _stat(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_ino, st.st_mtime_ns

    def _read(self) -> str:
        return self.path.read_text().strip()

    def _refresh(self, *, force: bool = False) -> None:
        now = self._now()
        if not force and now - self._checked < self.recheck_s:
            return
        self._checked = now
        try:
            signature = self._stat()
            if signature == self._signature:
                return
            value = self._read()
        except OSError as exc:
            # Keep serving with the value in hand: a file briefly unreadable must not refuse every request.
            log.warning("secret file %s unreadable (%s): keeping the value read before", self.path, exc.strerror)
            return
        self._signature = signature
        if value != self._value:
            self._previous, self._previous_until = self._value, signature[1] / 1e9 + self.grace_s
            self._value = value
            log.info("secret file %s changed: using the new value", self.path)

    def value(self) -> str:
        """The current value (what a presenting side sends)."""
        self._refresh()
        return self._value

    def accepts(self, given: str) -> bool:
        """Whether `given` is the current value, or the one it replaced less than `grace_s` ago (constant time).

        A value that matches neither makes it look at the file at once: the presenting side may have noticed a
        rotation first (it rechecks on its own schedule), and its new value must not be refused in between.
        """
        self._refresh()
        if self._matches(given):
            return True
        self._refresh(force=True)
        return self._matches(given)

    def _matches(self, given: str) -> bool:
        current = hmac.compare_digest(given.encode(), self._value.encode())
        previous = self._previous is not None and self._now() < self._previous_until and hmac.compare_digest(
            given.encode(), self._previous.encode())
        return bool(self._value) and (current or previous)
