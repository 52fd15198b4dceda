"""Dead letters (contract section 1): what goes to the dead-letter topic for a record that is
not a valid event, whatever Kafka accepted as that record.

A dead letter keeps the record's key and, as value, the original bytes. Where they would not
fit one produce request, it keeps their first bytes that fit and says so in headers
(``truncated``, ``original-size``; for an oversized key ``key-truncated``,
``original-key-size``). A null value becomes an empty value with ``null-value: true``. The
reason goes to the ``error`` header, at most ``ERROR_MAX_BYTES`` bytes of UTF-8 (the middle
of a longer one cut out), and the
record's position to ``source-topic`` / ``source-partition`` / ``source-offset``.
"""

from __future__ import annotations

from dataclasses import dataclass

ERROR_MAX_BYTES = 1024
# The smallest size a dead letter is ever asked to fit: its headers (error up to 1 KiB) fit.
MIN_DEAD_LETTER_BYTES = 2048

# Kafka's record format v2, as upper bounds: a batch header, then per record a length,
# attributes, timestamp and offset deltas, key and value lengths and a header count (varints
# of at most 5 bytes each, 10 for the timestamp delta), and per header two length varints.
_BATCH_OVERHEAD = 61
_RECORD_OVERHEAD = 1 + 5 + 10 + 5 + 5 + 5 + 5
_HEADER_OVERHEAD = 10

Headers = tuple[tuple[str, bytes], ...]


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """An upper bound of the bytes one record takes in a produce request of its own."""
    size = _BATCH_OVERHEAD + _RECORD_OVERHEAD + len(key or b"") + len(value or b"")
    for name, data in headers:
        size += _HEADER_OVERHEAD + len(name.encode()) + len(data)
    return size


def error_text(reason: str) -> bytes:
    """``reason`` as UTF-8 of at most ``ERROR_MAX_BYTES``: a longer one (it may quote the
    offending value) keeps its start and its end (where the location is), cut on character
    boundaries and joined by '...'."""
    data = reason.encode("utf-8", "replace")
    if len(data) <= ERROR_MAX_BYTES:
        return data
    tail = ERROR_MAX_BYTES // 4
    head = ERROR_MAX_BYTES - tail - 3
    return (data[:head].decode("utf-8", "ignore").encode() + b"..."
            + data[-tail:].decode("utf-8", "ignore").encode())


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: Headers

    def size(self) -> int:
        return record_size(self.key, self.value, self.headers)


def dead_letter(key: bytes | None, value: bytes | None, reason: str, *, max_bytes: int,
                source: tuple[str, int, int] | None = None) -> DeadLetter:
    """The dead letter of one record (``source``: its topic, partition and offset), at most
    ``max_bytes`` large (for ``max_bytes`` >= ``MIN_DEAD_LETTER_BYTES``)."""
    headers: list[tuple[str, bytes]] = [("error", error_text(reason))]
    if value is None:
        headers.append(("null-value", b"true"))
        value = b""
    if source is not None:
        topic, partition, offset = source
        headers += [("source-topic", topic.encode()), ("source-partition", b"%d" % partition),
                    ("source-offset", b"%d" % offset)]
    if record_size(key, value, tuple(headers)) <= max_bytes:
        return DeadLetter(key, value, tuple(headers))
    # Room for key and value once the headers saying what was cut are in (sized for the
    # longest sizes a record can have).
    room = max(0, max_bytes - record_size(b"", b"", (*headers, *_CUT_HEADERS)))
    key_len = len(key or b"")
    if key_len <= room // 2:
        value_room = room - key_len
    elif len(value) <= room // 2:
        value_room = len(value)
    else:
        value_room = room - room // 2
    if key is not None and key_len > room - value_room:
        headers += [("key-truncated", b"true"), ("original-key-size", b"%d" % key_len)]
        key = key[:room - value_room]
    if len(value) > value_room:
        headers += [("truncated", b"true"), ("original-size", b"%d" % len(value))]
        value = value[:value_room]
    return DeadLetter(key, value, tuple(headers))


_MAX_SIZE_DIGITS = b"9" * 20
_CUT_HEADERS: Headers = (("truncated", b"true"), ("original-size", _MAX_SIZE_DIGITS),
                         ("key-truncated", b"true"), ("original-key-size", _MAX_SIZE_DIGITS))
