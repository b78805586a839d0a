"""AWS event-stream messages (``application/vnd.amazon.eventstream``), the framing of the
InvokeEndpointWithResponseStream response body.

A message is a prelude (total length, headers length, CRC32 of those 8 bytes), the headers
(name length, name, value type, value length, value), the payload and a CRC32 of everything
before it. Only string headers (type 7) are written: they are all SageMaker sends.
"""

from __future__ import annotations

import json
import struct
from binascii import crc32
from collections.abc import Mapping

CONTENT_TYPE = "application/vnd.amazon.eventstream"

_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")
_STRING_HEADER = struct.Struct(">BH")
_STRING_TYPE = 7
# Prelude (8 bytes), its CRC (4) and the message CRC (4).
_OVERHEAD = 16
# The limits botocore's decoder enforces.
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 16 * 1024 * 1024


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """The wire form of *headers*, every value a string."""
    parts: list[bytes] = []
    for name, value in headers.items():
        raw_name = name.encode("utf-8")
        raw_value = value.encode("utf-8")
        if not 0 < len(raw_name) < 256:
            raise ValueError(f"header name {name!r} must be 1 to 255 bytes")
        if len(raw_value) > 0xFFFF:
            raise ValueError(f"header {name!r} is longer than 65535 bytes")
        parts.append(bytes((len(raw_name),)))
        parts.append(raw_name)
        parts.append(_STRING_HEADER.pack(_STRING_TYPE, len(raw_value)))
        parts.append(raw_value)
    encoded = b"".join(parts)
    if len(encoded) > MAX_HEADERS_LENGTH:
        raise ValueError("event-stream headers are longer than 128 KiB")
    return encoded


def encode_message(headers: bytes, payload: bytes) -> bytes:
    """One message from already encoded *headers* and a *payload*."""
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise ValueError("event-stream payload is longer than 16 MiB")
    prelude = _PRELUDE.pack(_OVERHEAD + len(headers) + len(payload), len(headers))
    prelude_crc = _CRC.pack(crc32(prelude))
    crc = crc32(payload, crc32(headers, crc32(prelude_crc, crc32(prelude))))
    return b"".join((prelude, prelude_crc, headers, payload, _CRC.pack(crc)))


# Every PayloadPart carries the same headers: encode them once.
_PAYLOAD_PART = encode_headers(
    {
        ":event-type": "PayloadPart",
        ":content-type": "application/octet-stream",
        ":message-type": "event",
    }
)


def payload_part(data: bytes) -> bytes:
    """A ``PayloadPart`` event carrying *data*."""
    return encode_message(_PAYLOAD_PART, data)


def exception_event(exception_type: str, body: Mapping[str, str]) -> bytes:
    """An exception message (such as ``ModelStreamError``) with a JSON *body*."""
    headers = encode_headers(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        }
    )
    return encode_message(headers, json.dumps(body).encode("utf-8"))
