"""TensorBoard event records in the standard library alone: no TensorFlow,
no tensorboard, no protobuf runtime, so logging works in any install.

An event file is a sequence of TFRecords, each holding one serialised
`tensorboard.Event` protobuf. Only the fields a scalar log needs are written
(field numbers from tensorboard's event.proto and summary.proto):

    Event          wall_time = 1 (double), step = 2 (int64),
                   file_version = 3 (string), summary = 5 (Summary)
    Summary        value = 1 (repeated Value)
    Summary.Value  tag = 1 (string), simple_value = 2 (float)
"""
import struct


def scalars_event(wall_time: float, step: int, scalars: dict[str, float]) -> bytes:
    """A framed record: the event logging `scalars` (tag -> value) at `step`."""
    values = b"".join(
        _field(1, _field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value))
        for tag, value in scalars.items())
    return record(_key(1, 1) + struct.pack("<d", wall_time)
                  + _key(2, 0) + _varint(step) + _field(5, values))


def version_event(wall_time: float) -> bytes:
    """A framed record: the event that opens every file (its format version)."""
    return record(_key(1, 1) + struct.pack("<d", wall_time)
                  + _field(3, b"brain.Event:2"))


def record(data: bytes) -> bytes:
    """TFRecord framing: the length, its masked CRC-32C, the data, its masked CRC-32C."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", _masked_crc32c(length)) + data
            + struct.pack("<I", _masked_crc32c(data)))


def _varint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"a step must be >= 0, got {value}")
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _field(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): a string or a nested message."""
    return _key(field, 2) + _varint(len(payload)) + payload


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):  # Castagnoli's polynomial, bit-reflected.
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of `data` (crc32c(b"123456789") == 0xE3069283). Event records
    are a few hundred bytes a logged step, so a byte loop costs nothing."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's CRC: CRC-32C rotated right by 15 bits plus a constant, mod 2**32."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
