"""Errors of the codecs."""

from __future__ import annotations

from streams.exceptions import SegmentStreamError


class MalformedRecord(SegmentStreamError):
    """A record of an internal topic that is not what this product writes."""
