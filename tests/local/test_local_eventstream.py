"""The AWS event-stream encoder, checked against botocore's own decoder."""

from __future__ import annotations

import json

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given
from hypothesis import strategies as st

from sm_tracing.local import _eventstream

_names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)
_headers = st.dictionaries(_names, st.text(max_size=200), max_size=6)


def _decode(data: bytes) -> list[tuple[dict[str, object], bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(dict(message.headers), message.payload) for message in buffer]


@given(headers=_headers, payload=st.binary(max_size=2048))
def test_message_round_trips_through_botocore(headers: dict[str, str], payload: bytes) -> None:
    """Any string headers and payload decode back unchanged, with both CRCs accepted."""
    encoded = _eventstream.encode_message(_eventstream.encode_headers(headers), payload)
    assert _decode(encoded) == [(headers, payload)]


@given(st.lists(st.binary(max_size=300), max_size=8))
def test_payload_parts_decode_one_by_one(parts: list[bytes]) -> None:
    """Concatenated PayloadPart events decode as separate events, in order."""
    decoded = _decode(b"".join(_eventstream.payload_part(part) for part in parts))
    assert [payload for _, payload in decoded] == parts
    for headers, _ in decoded:
        assert headers == {
            ":event-type": "PayloadPart",
            ":content-type": "application/octet-stream",
            ":message-type": "event",
        }


def test_exception_event_carries_type_and_json_body() -> None:
    """An exception message names its type in headers and carries a JSON body."""
    body = {"Message": "broken", "ErrorCode": "StreamBroken"}
    [(headers, payload)] = _decode(_eventstream.exception_event("ModelStreamError", body))
    assert headers[":message-type"] == "exception"
    assert headers[":exception-type"] == "ModelStreamError"
    assert json.loads(payload) == body


@pytest.mark.parametrize(
    ("headers", "payload"),
    [
        ({"": "empty name"}, b""),
        ({"n" * 256: "name too long"}, b""),
        ({"value": "v" * 65536}, b""),
        ({}, b"p" * (_eventstream.MAX_PAYLOAD_LENGTH + 1)),
    ],
    ids=["empty-name", "long-name", "long-value", "large-payload"],
)
def test_out_of_range_messages_are_refused(headers: dict[str, str], payload: bytes) -> None:
    """Names, values and payloads beyond the format's limits raise ValueError."""
    with pytest.raises(ValueError):
        _eventstream.encode_message(_eventstream.encode_headers(headers), payload)
