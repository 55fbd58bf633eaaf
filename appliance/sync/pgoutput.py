"""Decoder for the messages of Postgres's `pgoutput` logical decoding plugin, protocol version 1.

Pure: bytes in, frozen dataclasses out, no I/O. One XLogData payload of the replication stream (or one row of
`pg_logical_slot_peek_binary_changes(..., 'proto_version', '1', 'publication_names', ...)`) is one message.

    >>> decode_message(bytes.fromhex("49000040004e0002740000000131740000000161"))
    Insert(relation_oid=16384, new=('1', 'a'))

Protocol version 1 is what the engine asks for (as Electric does): it has no in-progress streaming, so every
change arrives between the Begin and Commit of a transaction that has already committed. Messages of later
versions (stream start/stop/commit/abort, prepared transactions) are refused rather than misread.

Integers are big-endian; strings are NUL-terminated in the client encoding, which the replication client sets
to UTF8. Column values are the type's text output ('t'), or its binary send form ('b') only when the
`binary` option is asked for, which this engine never does.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

# Postgres timestamps count microseconds from 2000-01-01 00:00 UTC.
PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)

PROTO_VERSION: Final = 1


class Toast(enum.Enum):
    """Marks a column whose TOASTed value did not change in an UPDATE, so the server did not send it."""

    UNCHANGED = "unchanged-toast"

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = Toast.UNCHANGED

# One column of a tuple: None for SQL NULL, str for text output, bytes for binary output.
ColumnValue = str | bytes | None | Literal[Toast.UNCHANGED]
TupleData = tuple[ColumnValue, ...]


class DecodeError(ValueError):
    """The bytes are not a pgoutput v1 message (truncated, unknown type, or trailing garbage)."""


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int  # LSN of the transaction's commit record
    commit_ts: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int  # unused by Postgres so far, always 0
    commit_lsn: int  # LSN of the commit record
    end_lsn: int  # end of the commit record: the position to confirm once the transaction is stored
    commit_ts: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int  # commit LSN on the origin server
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    name: str
    type_oid: int
    atttypmod: int  # -1 when the type has no modifier
    is_key: bool  # part of the replica identity


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class Type:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    new: TupleData
    # At most one of these: the whole old row ('O', REPLICA IDENTITY FULL) or the old key ('K', when the
    # key changed under a key/index identity; non-key columns are sent as NULL). Neither when the identity
    # is DEFAULT/INDEX and the key did not change.
    old: TupleData | None = None
    key: TupleData | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    # Exactly one of these, as for Update.
    old: TupleData | None = None
    key: TupleData | None = None


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """pg_logical_emit_message(); only sent when the `messages` option is on."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | LogicalMessage

_INT8 = struct.Struct(">b")
_UINT8 = struct.Struct(">B")
_INT16 = struct.Struct(">h")
_UINT32 = struct.Struct(">I")
_INT32 = struct.Struct(">i")
_UINT64 = struct.Struct(">Q")
_INT64 = struct.Struct(">q")
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">bQQq")
_COLUMN_TAIL = struct.Struct(">Ii")  # type oid, atttypmod
_TRUNCATE_HEAD = struct.Struct(">ib")

_TRUNCATE_CASCADE: Final = 1
_TRUNCATE_RESTART_IDENTITY: Final = 2


def timestamp_from_pg(microseconds: int) -> datetime:
    """A Postgres TimestampTz (µs since 2000-01-01 UTC) as an aware UTC datetime."""
    return PG_EPOCH + timedelta(microseconds=microseconds)


class _Reader:
    """A cursor over one message; every read checks bounds so truncated input fails loudly."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        try:
            values = fmt.unpack_from(self.data, self.pos)
        except struct.error as exc:
            raise DecodeError(f"message truncated at byte {self.pos}") from exc
        self.pos += fmt.size
        return values

    def int_(self, fmt: struct.Struct) -> int:
        return self.unpack(fmt)[0]

    def byte(self) -> str:
        if self.pos >= len(self.data):
            raise DecodeError(f"message truncated at byte {self.pos}")
        value = chr(self.data[self.pos])
        self.pos += 1
        return value

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise DecodeError(f"unterminated string at byte {self.pos}")
        value = self.data[self.pos : end].decode()
        self.pos = end + 1
        return value

    def raw(self, length: int) -> bytes:
        end = self.pos + length
        if length < 0 or end > len(self.data):
            raise DecodeError(f"value of {length} bytes runs past the end at byte {self.pos}")
        value = self.data[self.pos : end]
        self.pos = end
        return value

    def tuple_data(self) -> TupleData:
        # The hot path of the decoder (every row of every change), so it works on locals and bytes directly.
        data = self.data
        pos = self.pos
        try:
            (ncols,) = _INT16.unpack_from(data, pos)
            pos += 2
            values: list[ColumnValue] = []
            append = values.append
            for _ in range(ncols):
                kind = data[pos]
                pos += 1
                if kind == 0x74:  # 't'
                    (length,) = _INT32.unpack_from(data, pos)
                    pos += 4
                    end = pos + length
                    if end > len(data) or length < 0:
                        raise DecodeError(f"text value of {length} bytes runs past the end at byte {pos}")
                    append(data[pos:end].decode())
                    pos = end
                elif kind == 0x6E:  # 'n'
                    append(None)
                elif kind == 0x75:  # 'u'
                    append(UNCHANGED_TOAST)
                elif kind == 0x62:  # 'b'
                    (length,) = _INT32.unpack_from(data, pos)
                    pos += 4
                    end = pos + length
                    if end > len(data) or length < 0:
                        raise DecodeError(f"binary value of {length} bytes runs past the end at byte {pos}")
                    append(data[pos:end])
                    pos = end
                else:
                    raise DecodeError(f"unknown tuple column kind {chr(kind)!r} at byte {pos - 1}")
        except (struct.error, IndexError) as exc:
            raise DecodeError(f"tuple data truncated at byte {pos}") from exc
        self.pos = pos
        return tuple(values)

    def finish(self, message: Message) -> Message:
        if self.pos != len(self.data):
            raise DecodeError(f"{len(self.data) - self.pos} trailing bytes after {type(message).__name__}")
        return message


def _namespace(reader: _Reader) -> str:
    # pgoutput sends pg_catalog as the empty string to save bytes.
    return reader.string() or "pg_catalog"


def _begin(reader: _Reader) -> Message:
    final_lsn, commit_ts, xid = reader.unpack(_BEGIN)
    return Begin(final_lsn=final_lsn, commit_ts=timestamp_from_pg(commit_ts), xid=xid)


def _commit(reader: _Reader) -> Message:
    flags, commit_lsn, end_lsn, commit_ts = reader.unpack(_COMMIT)
    return Commit(flags=flags, commit_lsn=commit_lsn, end_lsn=end_lsn, commit_ts=timestamp_from_pg(commit_ts))


def _origin(reader: _Reader) -> Message:
    commit_lsn = reader.int_(_UINT64)
    return Origin(commit_lsn=commit_lsn, name=reader.string())


def _relation(reader: _Reader) -> Message:
    oid = reader.int_(_UINT32)
    namespace = _namespace(reader)
    name = reader.string()
    replica_identity = reader.byte()
    ncols = reader.int_(_INT16)
    columns = []
    for _ in range(ncols):
        flags = reader.int_(_UINT8)
        column_name = reader.string()
        type_oid, atttypmod = reader.unpack(_COLUMN_TAIL)
        columns.append(RelationColumn(name=column_name, type_oid=type_oid, atttypmod=atttypmod, is_key=bool(flags & 1)))
    return Relation(oid=oid, namespace=namespace, name=name, replica_identity=replica_identity, columns=tuple(columns))


def _type(reader: _Reader) -> Message:
    oid = reader.int_(_UINT32)
    namespace = _namespace(reader)
    return Type(oid=oid, namespace=namespace, name=reader.string())


def _expect(reader: _Reader, expected: str, what: str) -> None:
    found = reader.byte()
    if found != expected:
        raise DecodeError(f"{what}: expected {expected!r}, found {found!r} at byte {reader.pos - 1}")


def _insert(reader: _Reader) -> Message:
    relation_oid = reader.int_(_UINT32)
    _expect(reader, "N", "insert")
    return Insert(relation_oid=relation_oid, new=reader.tuple_data())


def _update(reader: _Reader) -> Message:
    relation_oid = reader.int_(_UINT32)
    old = key = None
    marker = reader.byte()
    if marker == "O":
        old = reader.tuple_data()
        marker = reader.byte()
    elif marker == "K":
        key = reader.tuple_data()
        marker = reader.byte()
    if marker != "N":
        raise DecodeError(f"update: expected 'N', found {marker!r} at byte {reader.pos - 1}")
    return Update(relation_oid=relation_oid, new=reader.tuple_data(), old=old, key=key)


def _delete(reader: _Reader) -> Message:
    relation_oid = reader.int_(_UINT32)
    marker = reader.byte()
    if marker == "O":
        return Delete(relation_oid=relation_oid, old=reader.tuple_data())
    if marker == "K":
        return Delete(relation_oid=relation_oid, key=reader.tuple_data())
    raise DecodeError(f"delete: expected 'O' or 'K', found {marker!r} at byte {reader.pos - 1}")


def _truncate(reader: _Reader) -> Message:
    count, options = reader.unpack(_TRUNCATE_HEAD)
    if count < 0:
        raise DecodeError(f"truncate of {count} relations")
    oids = reader.unpack(struct.Struct(f">{count}I"))
    return Truncate(
        relation_oids=oids,
        cascade=bool(options & _TRUNCATE_CASCADE),
        restart_identity=bool(options & _TRUNCATE_RESTART_IDENTITY),
    )


def _logical_message(reader: _Reader) -> Message:
    flags = reader.int_(_INT8)
    lsn = reader.int_(_UINT64)
    prefix = reader.string()
    length = reader.int_(_INT32)
    return LogicalMessage(transactional=bool(flags & 1), lsn=lsn, prefix=prefix, content=reader.raw(length))


_DECODERS = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _logical_message,
}

# Sent only by protocol versions above 1; naming them makes a misconfigured slot obvious.
_LATER_VERSIONS = {
    ord("S"): "stream start",
    ord("E"): "stream stop",
    ord("c"): "stream commit",
    ord("A"): "stream abort",
    ord("b"): "begin prepare",
    ord("P"): "prepare",
    ord("K"): "commit prepared",
    ord("r"): "rollback prepared",
    ord("p"): "stream prepare",
}


def decode_message(data: bytes) -> Message:
    """Decode one pgoutput v1 message."""
    if not data:
        raise DecodeError("empty message")
    decoder = _DECODERS.get(data[0])
    if decoder is None:
        later = _LATER_VERSIONS.get(data[0])
        if later is not None:
            raise DecodeError(f"{later} message ({chr(data[0])!r}) belongs to a pgoutput protocol version above 1")
        raise DecodeError(f"unknown message type {chr(data[0])!r}")
    reader = _Reader(bytes(data), 1)
    return reader.finish(decoder(reader))
