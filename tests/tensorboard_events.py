"""Reads scalars back from tensorboard event files (TFRecord framing + tensorboardX's protos)."""

import struct
from pathlib import Path

from tensorboardX.proto import event_pb2


def read_records(path):
    """Yields the payload of each record: u64 length, u32 crc, payload, u32 crc."""
    data = Path(path).read_bytes()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        offset += 12
        yield data[offset : offset + length]
        offset += length + 4


def read_scalars(log_dir):
    """``{tag: [(step, value), ...]}`` from every event file under ``log_dir``, in write order."""
    scalars = {}
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        for record in read_records(path):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
