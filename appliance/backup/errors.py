"""Errors of backup, restore and drills. Messages say what failed and what to do; they never carry a secret."""

from __future__ import annotations


class BackupError(RuntimeError):
    """A backup, restore or drill step that failed."""


class BadRequest(BackupError):
    """Operator input that cannot be honoured (a malformed or unreachable time, no backup yet, ...)."""
