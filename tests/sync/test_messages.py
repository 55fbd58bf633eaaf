"""Electric's JSON forms: keys (with the escaping examples from Electric's own docs), control messages."""

from __future__ import annotations

import json

from appliance.sync import messages


def test_keys_follow_primary_key_order_and_quote_every_part() -> None:
    assert messages.build_key("hello", "world", {"c": "d", "a": "b"}, ["a", "c"]) == '"hello"."world"/"b"/"d"'
    assert messages.build_key("hello", "world", {"c": "d", "a": "b"}, ["c", "a"]) == '"hello"."world"/"d"/"b"'


def test_slashes_in_key_values_are_doubled() -> None:
    row = {"a": "test/test", "c": "test"}
    assert messages.build_key("hello", "world", row, ["a", "c"]) == '"hello"."world"/"test//test"/"test"'


def test_null_and_empty_key_parts_stay_distinct() -> None:
    assert messages.build_key("hello", "world", {"a": "1", "b": None, "c": "2"}, ["a", "b", "c"]) == (
        '"hello"."world"/"1"/_/"2"'
    )
    assert messages.build_key("hello", "world", {"a": "1", "b": "", "c": "2"}, ["a", "b", "c"]) == (
        '"hello"."world"/"1"/""/"2"'
    )


def test_dots_and_slashes_in_relation_names_are_doubled() -> None:
    assert messages.build_key('a"."b', "c", {"a": ""}, ["a"]) == '"a".."b"."c"/""'
    assert messages.build_key("a", 'b"/"', {"a": ""}, ["a"]) == '"a"."b"//""/""'


def test_control_messages() -> None:
    assert json.loads(messages.encode(messages.up_to_date(123))) == {
        "headers": {"control": "up-to-date", "global_last_seen_lsn": "123"}
    }
    # xids are strings: 64-bit values JavaScript numbers would round.
    assert json.loads(messages.encode(messages.snapshot_end(2**40, 2**40 + 5, [2**40 + 1]))) == {
        "headers": {
            "control": "snapshot-end",
            "xmin": str(2**40),
            "xmax": str(2**40 + 5),
            "xip_list": [str(2**40 + 1)],
        }
    }
    assert messages.MUST_REFETCH_BODY == b'[{"headers":{"control":"must-refetch"}}]'


def test_bodies_keep_utf8_and_join_messages_into_one_array() -> None:
    assert messages.encode({"v": "é✓"}) == '{"v":"é✓"}'.encode()
    assert messages.join_messages([b"{}", b'{"a":1},{"b":2}']) == b'[{},{"a":1},{"b":2}]'
    assert json.loads(messages.invalid_request({"offset": ["has invalid format"]})) == {
        "message": "Invalid request",
        "errors": {"offset": ["has invalid format"]},
    }
