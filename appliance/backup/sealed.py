"""Authenticated encryption of a byte stream of any size, for the side bundles.

AES-256-GCM over 1 MiB chunks (the STREAM construction): each chunk's nonce is a random per-file prefix, the
chunk's index and a last-chunk flag, and every chunk authenticates the file header. Reordered, dropped,
truncated or altered chunks, and a file sealed with another key, all fail to open. The key comes from the
tenant's backup cipher passphrase through HKDF-SHA256 with a per-file salt: the passphrase is 32 random bytes
already (secrets.token_urlsafe), so a slow password hash would add nothing.

    with open(path, "wb") as raw, Sealer(raw, passphrase) as out:
        out.write(data)
    with open(path, "rb") as raw:
        for block in open_sealed(raw, passphrase): ...
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from types import TracebackType
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"APPLBNDL\x01"
CHUNK = 1 << 20
TAG = 16
_HEADER = struct.Struct(f">{len(MAGIC)}s16s7sI")  # magic, salt, nonce prefix, chunk size
INFO = b"appliance backup bundle v1"


class SealError(ValueError):
    """The sealed data cannot be opened: wrong key, or altered, truncated or not a bundle at all."""


def derive_key(passphrase: str, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=INFO).derive(passphrase.encode())


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= 1 << 32:
        raise SealError("too many chunks")
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


class Sealer:
    """A write-only file object that seals what is written to `out`; close it to write the last chunk."""

    def __init__(self, out: BinaryIO, passphrase: str) -> None:
        salt, self._prefix = os.urandom(16), os.urandom(7)
        self._header = _HEADER.pack(MAGIC, salt, self._prefix, CHUNK)
        self._aead = AESGCM(derive_key(passphrase, salt))
        self._out = out
        self._buffer = bytearray()
        self._index = 0
        self._closed = False
        out.write(self._header)

    def write(self, data: bytes) -> int:
        if self._closed:
            raise ValueError("write to a closed Sealer")
        self._buffer.extend(data)
        # Keep at least one byte back: the last chunk (possibly short, possibly empty) is written by close().
        while len(self._buffer) > CHUNK:
            self._emit(bytes(self._buffer[:CHUNK]), last=False)
            del self._buffer[:CHUNK]
        return len(data)

    def _emit(self, chunk: bytes, *, last: bool) -> None:
        self._out.write(self._aead.encrypt(_nonce(self._prefix, self._index, last), chunk, self._header))
        self._index += 1

    def flush(self) -> None:
        """Nothing to flush before close (tarfile calls it)."""

    def close(self) -> None:
        if not self._closed:
            self._emit(bytes(self._buffer), last=True)
            self._buffer.clear()
            self._closed = True

    def __enter__(self) -> Sealer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()


def _read_exactly(raw: BinaryIO, size: int) -> bytes:
    parts = []
    while size:
        block = raw.read(size)
        if not block:
            break
        parts.append(block)
        size -= len(block)
    return b"".join(parts)


def open_sealed(raw: BinaryIO, passphrase: str) -> Iterator[bytes]:
    """Yield the plaintext chunks of sealed data; raises SealError at the first chunk that does not open."""
    header = _read_exactly(raw, _HEADER.size)
    if len(header) != _HEADER.size:
        raise SealError("too short to be a bundle")
    magic, salt, prefix, chunk = _HEADER.unpack(header)
    if magic != MAGIC or chunk <= 0 or chunk > 64 * CHUNK:
        raise SealError("not a bundle of this format")
    aead = AESGCM(derive_key(passphrase, salt))
    index = 0
    current = _read_exactly(raw, chunk + TAG)
    while True:
        following = _read_exactly(raw, chunk + TAG)
        last = not following
        try:
            yield aead.decrypt(_nonce(prefix, index, last), current, header)
        except InvalidTag:
            raise SealError(f"chunk {index} does not open (altered, truncated, or another key)") from None
        if last:
            return
        current = following
        index += 1


class SealedReader:
    """A read-only file object over `open_sealed`, for tarfile's stream mode."""

    def __init__(self, raw: BinaryIO, passphrase: str) -> None:
        self._chunks = open_sealed(raw, passphrase)
        self._buffer = bytearray()
        self._done = False

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._buffer) < size):
            try:
                self._buffer.extend(next(self._chunks))
            except StopIteration:
                self._done = True
        if size < 0:
            size = len(self._buffer)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data
