"""Raw Kafka record batches (message format v2) for tests: good ones and undecodable ones.

Built with aiokafka's own batch builder, then damaged on purpose:

- ``"payload"``: the compressed bytes are garbled and the CRC recomputed, so the batch passes
  every check a broker or client does on the header and fails only when decompressed;
- ``"crc"``: one byte flipped after the CRC was computed (a corrupt batch on disk).
"""

from __future__ import annotations

import struct
import time
from typing import Literal

from aiokafka.record._crc32c import crc as crc32c
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy as Builder

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
# Layout of the v2 batch header (see the Kafka protocol guide, "Record Batch").
_HEADER_SIZE = 61
_CRC_OFFSET = 17
_ATTRIBUTES_OFFSET = 21

Damage = Literal["payload", "crc"]


def record_batch(
    records: list[tuple[bytes | None, bytes]],
    codec: str = "gzip",
    *,
    base_offset: int = 0,
    damage: Damage | None = None,
) -> bytes:
    builder = Builder(
        magic=2,
        compression_type=CODECS[codec],
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    now = int(time.time() * 1000)
    for i, (key, value) in enumerate(records):
        builder.append(i, timestamp=now, key=key, value=value, headers=[])
    buf = bytearray(builder.build())
    struct.pack_into(">q", buf, 0, base_offset)  # not covered by the CRC
    if damage == "payload":
        for i in range(_HEADER_SIZE + 8, len(buf)):
            buf[i] ^= 0x5A
        struct.pack_into(">I", buf, _CRC_OFFSET, crc32c(bytes(buf[_ATTRIBUTES_OFFSET:])))
    elif damage == "crc":
        buf[-1] ^= 0xFF
    return bytes(buf)
