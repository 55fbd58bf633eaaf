"""Request validation and the live cursor, exactly as Electric's Api.Params and Plug.Utils do them."""

from __future__ import annotations

import pytest

from appliance.sync.http import CURSOR_EPOCH, InvalidRequest, next_cursor, parse_shape_params
from appliance.sync.offsets import BEFORE_ALL, LogOffset


def errors(query: dict[str, str]) -> dict[str, list[str]]:
    with pytest.raises(InvalidRequest) as caught:
        parse_shape_params(query)
    return caught.value.errors


def test_valid_requests_become_definitions() -> None:
    params = parse_shape_params(
        {
            "table": "Items",
            "offset": "-1",
            "where": "id = $1",
            "params[1]": "5",
            "columns": "id,name",
            "replica": "full",
            "handle": "ignored-with-minus-one",
        }
    )
    assert params.offset == BEFORE_ALL and params.handle is None
    assert params.definition is not None
    assert (params.definition.schema, params.definition.table) == ("public", "items")
    assert params.definition.params == ("5",) and params.definition.columns == ("id", "name")
    live = parse_shape_params({"table": "items", "offset": "5_2", "handle": "h", "live": "true", "live_sse": "true"})
    assert live.offset == LogOffset(5, 2) and live.live and live.live_sse


def test_validation_messages() -> None:
    assert errors({"table": "items"}) == {"offset": ["can't be blank"]}
    assert errors({"table": "items", "offset": "x"}) == {"offset": ["has invalid format"]}
    assert errors({"table": "items", "offset": "1_1"}) == {"handle": ["can't be blank when offset != -1"]}
    assert errors({"table": "items", "offset": "-1", "live": "true"}) == {"live": ["can't be true when offset == -1"]}
    assert errors({"table": "items", "offset": "1_1", "handle": "h", "live_sse": "true"}) == {
        "live_sse": ["can't be true unless live is also true"]
    }
    assert errors({"offset": "-1"}) == {"table": ["can't be blank"]}
    assert errors({"table": "items", "offset": "-1", "replica": "half"}) == {"replica": ["is invalid"]}
    assert errors({"table": "items", "offset": "-1", "params[2]": "x"}) == {
        "params": ["params must be numbered $1..$n without gaps"]
    }


def test_cursor_is_the_next_interval_boundary_or_beyond_the_clients() -> None:
    now = CURSOR_EPOCH + 1001.5  # Electric truncates to whole seconds: 1001
    assert next_cursor(20_000, None, now) == 1020
    assert next_cursor(20_000, "999", now) == 1020
    bumped = next_cursor(20_000, "1020", now)
    assert 1021 <= bumped <= 1020 + 3600
    assert next_cursor(500, None, now) == 0  # under a second: Electric sends 0

