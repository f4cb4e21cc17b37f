"""Just enough Sparkplug B to follow an edge node's life: its topic names and the bdSeq metric
of NBIRTH / NDEATH payloads.

The payloads are protobuf (Eclipse Tahu `sparkplug_b.proto`). tocsin needs one number out of
them, so a ~60-line reader of the protobuf wire format stands in for the `protobuf` package and
generated code. The fields it reads:

    message Payload { uint64 timestamp = 1; repeated Metric metrics = 2; uint64 seq = 3; ... }
    message Metric  { string name = 1; uint64 alias = 2; uint64 timestamp = 3;
                      uint32 datatype = 4; ...
                      oneof value { uint32 int_value = 10; uint64 long_value = 11; ... } }

bdSeq is the metric named "bdSeq", an Int64/UInt64 in `long_value` (some nodes send it in
`int_value`). Every other field is skipped by its wire type.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE = "spBv1.0"
# Message types that mean the node itself spoke. NCMD / DCMD are written *to* the node by host
# applications and STATE by hosts, so they say nothing about the node's life.
NODE_MESSAGES = frozenset({"NBIRTH", "NDEATH", "NDATA", "DBIRTH", "DDEATH", "DDATA"})

_PAYLOAD_METRICS = 2
_METRIC_NAME = 1
_METRIC_INT_VALUE = 10
_METRIC_LONG_VALUE = 11
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class SparkplugError(ValueError):
    """A payload that is not valid protobuf."""


@dataclass(frozen=True)
class SparkplugTopic:
    group_id: str
    message_type: str
    edge_node_id: str
    device_id: str | None = None


def parse_topic(topic: str) -> SparkplugTopic | None:
    """`spBv1.0/GROUP/TYPE/NODE[/DEVICE]` split into its parts; None for any other topic."""
    parts = topic.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE or not all(parts[1:]):
        return None
    device = parts[4] if len(parts) == 5 else None
    return SparkplugTopic(parts[1], parts[2], parts[3], device)


def decode_bdseq(payload: bytes) -> int | None:
    """The bdSeq metric's value from a Sparkplug B payload; None when the payload has none.
    Raises SparkplugError when the bytes are not a protobuf message."""
    for number, _wire, value in _fields(payload):
        if number != _PAYLOAD_METRICS or not isinstance(value, bytes):
            continue
        name: str | None = None
        number_value: int | None = None
        for field_number, _metric_wire, field_value in _fields(value):
            if field_number == _METRIC_NAME and isinstance(field_value, bytes):
                name = field_value.decode("utf-8", errors="replace")
            elif field_number in (_METRIC_INT_VALUE, _METRIC_LONG_VALUE) and isinstance(
                field_value, int
            ):
                number_value = field_value
        if name == "bdSeq" and number_value is not None:
            return number_value
    return None


def _fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """The (field number, wire type, value) triples of one protobuf message: varints as ints,
    length-delimited fields as bytes, fixed-width fields as little-endian ints."""
    fields: list[tuple[int, int, int | bytes]] = []
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == _VARINT:
            value, position = _varint(data, position)
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if position + size > len(data):
                raise SparkplugError("truncated fixed-width field")
            value = int.from_bytes(data[position : position + size], "little")
            position += size
        elif wire == _LEN:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise SparkplugError("truncated length-delimited field")
            value = data[position : position + length]
            position += length
        else:
            raise SparkplugError(f"unsupported protobuf wire type {wire}")
        if number == 0:
            raise SparkplugError("protobuf field number 0")
        fields.append((number, wire, value))
    return fields


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while position < len(data):
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift >= 64:
            raise SparkplugError("varint longer than 10 bytes")
    raise SparkplugError("truncated varint")
