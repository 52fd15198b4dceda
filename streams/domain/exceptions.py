"""Errors of the domain."""

from __future__ import annotations

from streams.exceptions import SegmentStreamError


class InvalidEvent(SegmentStreamError):
    """An input record that breaks the contract; ``reason`` is said in its dead letter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
