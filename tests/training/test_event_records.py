"""The event records, written with the standard library alone, against
independent references: CRC-32C's published check value, google-crc32c, and
TensorBoard's own protobuf classes parsing what we wrote."""
import struct

import numpy as np
import pytest

from grepq_jax.training import event_records


def test_crc32c_gives_the_published_check_value_and_agrees_with_google_crc32c():
    assert event_records.crc32c(b"123456789") == 0xE3069283  # RFC 3720, B.4
    assert event_records.crc32c(b"") == 0
    google_crc32c = pytest.importorskip("google_crc32c")
    data = np.random.default_rng(0).integers(0, 256, 4097, dtype=np.uint8).tobytes()
    for size in (1, 7, 64, 4097):
        assert event_records.crc32c(data[:size]) == google_crc32c.value(data[:size])


def _payload(framed: bytes) -> bytes:
    (length,) = struct.unpack("<Q", framed[:8])
    assert len(framed) == 8 + 4 + length + 4
    return framed[12:12 + length]


def test_events_parse_with_tensorboards_protos():
    event_pb2 = pytest.importorskip("tensorboard.compat.proto.event_pb2")
    version = event_pb2.Event.FromString(_payload(event_records.version_event(12.5)))
    assert (version.wall_time, version.file_version) == (12.5, "brain.Event:2")
    framed = event_records.scalars_event(3.25, 300, {"loss": 0.125, "lr/ë": -2.5})
    event = event_pb2.Event.FromString(_payload(framed))
    assert (event.wall_time, event.step) == (3.25, 300)
    assert [(v.tag, v.simple_value) for v in event.summary.value] == [
        ("loss", 0.125), ("lr/ë", -2.5)]
