"""An event's position: where its record sits in the input topic, (partition, offset), as one
signed 64-bit integer, ordered as the pairs are.

It breaks ties between events of one recommendation with equal ``ts`` (contract §2: the one
later in the topic partition wins). Both ingest paths use it, the record applied on its own
partition and the one that went through the repartition topic (which carries the input record's
partition and offset), so the order never depends on the path an event took nor on where a
replay put its repartitioned copy. Across partitions, which the contract does not order, the
greater partition number wins: deterministic, whatever the arrival order.
"""

from __future__ import annotations

from typing import Final

from streams.domain.exceptions import InvalidEvent

OFFSET_BITS: Final = 47
# partition << 47 | offset stays below 2**63 (a signed 64-bit int, as the store keeps orders):
# a partition would need 2**47 records to outgrow its bits, and topics have far fewer than
# 2**16 partitions.
OFFSET_LIMIT: Final = 1 << OFFSET_BITS
PARTITION_LIMIT: Final = 1 << 16


def input_position(partition: int, offset: int) -> int:
    """The position of the record at ``offset`` of input partition ``partition``; raises
    InvalidEvent if either number is outside its range."""
    if not (0 <= partition < PARTITION_LIMIT and 0 <= offset < OFFSET_LIMIT):
        raise InvalidEvent(f"input position (partition {partition}, offset {offset}) is out of "
                           f"range (partition < {PARTITION_LIMIT}, offset < {OFFSET_LIMIT})")
    return partition << OFFSET_BITS | offset
