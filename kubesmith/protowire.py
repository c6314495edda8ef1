"""The protobuf wire format's two encoders that hand-built messages need (the OpenAPI v2
document for old kubectl builds, the gRPC health probe's request): where a generated
module would be more than the message."""
from __future__ import annotations


def varint(value: int) -> bytes:
    """A non-negative integer as a base-128 varint."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field `number` of wire type 2 (bytes, string, embedded message)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload
