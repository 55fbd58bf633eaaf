"""Offsets: total order and wire forms, including every malformed form a client might send."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.sync.offsets import (
    BEFORE_ALL,
    FIRST_SNAPSHOT_CHUNK,
    INF_OP,
    MAX_OP,
    MAX_TX,
    NOW,
    OFFSET_ERROR,
    SNAPSHOT_END,
    LogOffset,
    parse_request_offset,
)

live_offsets = st.builds(LogOffset.live, st.integers(1, MAX_TX), st.integers(0, MAX_OP))
snapshot_offsets = st.builds(LogOffset.snapshot_chunk, st.integers(0, MAX_OP))
any_offset = st.one_of(st.just(BEFORE_ALL), st.just(SNAPSHOT_END), snapshot_offsets, live_offsets)


def test_wire_forms_round_trip_for_the_special_offsets() -> None:
    assert LogOffset.parse("-1") is BEFORE_ALL
    assert str(BEFORE_ALL) == "-1"
    assert LogOffset.parse("0_inf") == SNAPSHOT_END
    assert str(SNAPSHOT_END) == "0_inf"
    assert LogOffset.parse("0_0") == FIRST_SNAPSHOT_CHUNK
    assert LogOffset.parse("26800584_4") == LogOffset(26800584, 4)
    assert str(LogOffset(26800584, 4)) == "26800584_4"


def test_the_largest_representable_offsets_parse() -> None:
    assert LogOffset.parse(f"{MAX_TX}_{MAX_OP}") == LogOffset(MAX_TX, MAX_OP)


def test_order_is_before_all_then_snapshot_chunks_then_snapshot_end_then_live() -> None:
    ordered = [
        BEFORE_ALL,
        LogOffset.snapshot_chunk(0),
        LogOffset.snapshot_chunk(1),
        LogOffset.snapshot_chunk(10),
        LogOffset.snapshot_chunk(MAX_OP),
        SNAPSHOT_END,
        LogOffset.live(1, 0),
        LogOffset.live(1, 1),
        LogOffset.live(2, 0),
        LogOffset.live(10, 0),
        LogOffset.live(MAX_TX, MAX_OP),
    ]
    assert sorted(reversed(ordered)) == ordered
    for lower, higher in itertools.pairwise(ordered):
        assert lower < higher
        assert not higher <= lower


def test_live_offsets_compare_numerically_not_as_text() -> None:
    assert LogOffset.parse("9_0") < LogOffset.parse("10_0")
    assert LogOffset.parse("5_9") < LogOffset.parse("5_10")


@given(any_offset)
def test_format_then_parse_is_identity(offset: LogOffset) -> None:
    assert LogOffset.parse(str(offset)) == offset


@given(any_offset, any_offset)
def test_order_agrees_with_parsed_wire_forms(a: LogOffset, b: LogOffset) -> None:
    pa, pb = LogOffset.parse(str(a)), LogOffset.parse(str(b))
    assert (a < b) == (pa < pb)
    assert (a == b) == (str(a) == str(b))


@given(snapshot_offsets, live_offsets)
def test_every_snapshot_offset_is_before_snapshot_end_before_every_live_offset(
    snap: LogOffset, live: LogOffset
) -> None:
    assert BEFORE_ALL < snap < SNAPSHOT_END < live


def test_now_is_left_to_the_http_layer() -> None:
    assert parse_request_offset("now") == NOW
    assert parse_request_offset("-1") is BEFORE_ALL
    assert parse_request_offset("3_4") == LogOffset(3, 4)


MALFORMED = [
    "",
    " ",
    "now ",
    "NOW",
    "-1 ",
    " -1",
    "-1\n",
    "-01",
    "-2",
    "-1_0",
    "-0",
    "0",
    "1",
    "_",
    "_1",
    "1_",
    "1__2",
    "1_2_3",
    "1-2",
    "1.2",
    "1_2.0",
    "1e3_0",
    "+1_2",
    "1_+2",
    "-5_2",
    "5_-2",
    "01_2",
    "1_02",
    "00_0",
    " 1_2",
    "1_2 ",
    "1_2\n",
    "1_2\x00",
    "1 _2",
    "1_ 2",
    "1_000_0",  # int() accepts digit-group underscores
    "0x10_0",
    "١_٢",  # Arabic-Indic digits: int() accepts them
    "１_２",  # full-width digits
    "0_INF",
    "0_Inf",
    "0_infinity",
    "inf_0",
    "1_inf",
    "-1_inf",
    "0_nan",
    "abc",
    "0_-1",
    f"{MAX_TX + 1}_0",
    f"0_{INF_OP}",  # the reserved value of 0_inf must not be reachable as a number
    f"1_{MAX_OP + 1}",
    "9" * 400 + "_0",
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_offsets_are_rejected_with_a_400_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"^offset must be -1, now, or <int>_<int>$"):
        LogOffset.parse(text)
    with pytest.raises(ValueError, match=OFFSET_ERROR):
        parse_request_offset(text)


@given(st.text(max_size=30))
def test_arbitrary_text_either_parses_canonically_or_raises_the_400_message(text: str) -> None:
    try:
        offset = LogOffset.parse(text)
    except ValueError as exc:
        assert str(exc) == OFFSET_ERROR
    else:
        assert str(offset) == text


@pytest.mark.parametrize(
    ("tx", "op"), [(-1, 1), (-2, 0), (1, INF_OP), (MAX_TX + 1, 0), (0, -1), (0, INF_OP + 1)]
)
def test_constructor_refuses_offsets_with_no_wire_form(tx: int, op: int) -> None:
    with pytest.raises(ValueError):
        LogOffset(tx, op)


def test_live_refuses_lsn_zero_which_would_collide_with_snapshot_offsets() -> None:
    with pytest.raises(ValueError):
        LogOffset.live(0, 0)


def test_kinds() -> None:
    assert BEFORE_ALL.is_before_all and not BEFORE_ALL.is_snapshot and not BEFORE_ALL.is_live
    assert SNAPSHOT_END.is_snapshot and LogOffset(0, 3).is_snapshot
    assert LogOffset(7, 0).is_live and not LogOffset(7, 0).is_snapshot


def test_offsets_are_hashable_and_immutable() -> None:
    assert len({LogOffset(1, 2), LogOffset.parse("1_2")}) == 1
    with pytest.raises(AttributeError):
        LogOffset(1, 2).tx = 3  # type: ignore[misc]
