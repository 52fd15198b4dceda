"""Errors the worker's runtime raises on purpose."""

from __future__ import annotations

from streams.exceptions import SegmentStreamError


class TopicMismatch(SegmentStreamError):
    """An existing topic the worker cannot use as it is (a partition count other than
    SEGMENTS_PARTITIONS): the worker stops with exit code 2 and this message."""

    exit_code = 2
