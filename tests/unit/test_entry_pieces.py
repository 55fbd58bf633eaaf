"""What the gateway computes for every entry and read without Postgres: the entry's audit pieces (made from a
template per caller and thread), its request hash (which stored hashes depend on), and the key that coalesces
repeated read grants."""

from __future__ import annotations

import uuid

import pytest

from appliance.gateway.domain.auditlog import _detail_key
from appliance.gateway.domain.entries import audit_pieces, entry_audit, request_hash
from appliance.gateway.domain.models import EntryCreate


@pytest.mark.parametrize("actor", ["user:6b1f4c5e-0d7a-4c1e-9b7e-2f2d7a1c9e01", "@@entry@@", 'odd "actor" \\', "é"])
@pytest.mark.parametrize("names", [[], ["Echo", "bot-2"]])
def test_entry_audit_is_audit_pieces_whether_its_template_is_made_or_reused(actor: str, names: list[str]) -> None:
    subject = f"thread:{uuid.uuid4()}"
    for _ in range(3):  # the first call makes the template, the others reuse it with another entry id
        entry_id = uuid.uuid4()
        detail, pieces, middle = entry_audit(actor, subject, entry_id, "message", names)
        assert detail == {"entry_id": str(entry_id), "kind": "message", "mentions": names}
        assert (pieces, middle) == audit_pieces(actor, subject, detail)


def test_entry_audit_templates_are_per_kind_and_mentions() -> None:
    # One caller, one thread: entries of another kind or with other mentions get their own pieces, not those of
    # the template made first (the pieces are compared, not the detail, which differs anyway).
    actor, subject = "user:x", f"thread:{uuid.uuid4()}"
    for kind, names in [("message", []), ("system", []), ("message", ["Echo"]), ("message", []), ("system", [])]:
        entry_id = uuid.uuid4()
        _, pieces, middle = entry_audit(actor, subject, entry_id, kind, names)
        assert (pieces, middle) == audit_pieces(actor, subject, {"entry_id": str(entry_id), "kind": kind,
                                                                 "mentions": names})


def test_the_request_hash_text_never_changes() -> None:
    # Stored hashes tell a retry (same hash) from a conflict. These values were printed by the original form,
    # sha256 of json.dumps(entry.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
    # ensure_ascii=False), before request_hash stopped calling model_dump.
    plain = EntryCreate.model_validate({"id": "0b5e7c1a-3f2d-4e6b-9a8c-1d2e3f4a5b6c", "text": "hello"})
    assert request_hash(plain) == "41ffac39358ffa0754d24460cc55aa5573c36533b0cedf4d404a59a3f52527d3"
    full = EntryCreate.model_validate({
        "id": "0B5E7C1A-3F2D-4E6B-9A8C-1D2E3F4A5B6C", "text": "\u00e9 \u2028 x", "kind": "system",
        "reply_to": "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a",
        "data": {"b": [1, 2.5, None, True, {"z": "q", "a": -0.0}], "a": 10**30}})
    assert request_hash(full) == "a598e9a108d4a398c6f847354d3c738fb4f607dd75079ace10a4bed80a53242c"


def test_grant_keys_are_equal_exactly_for_equal_details() -> None:
    assert _detail_key({"access": "thread.read", "live": "no"}) == _detail_key({"live": "no", "access": "thread.read"})
    assert _detail_key({"access": "thread.read", "live": "no"}) != _detail_key({"access": "thread.read",
                                                                                "live": "sse"})
    assert _detail_key({"n": 1}) != _detail_key({"n": True}) != _detail_key({"n": 1.0})
    # Unhashable values: their canonical JSON.
    assert _detail_key({"houses": ["a", "b"]}) == _detail_key({"houses": ["a", "b"]})
    assert _detail_key({"houses": ["a", "b"]}) != _detail_key({"houses": ["b", "a"]})
