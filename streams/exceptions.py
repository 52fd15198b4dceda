"""Errors raised by the streams package."""


class SegmentStreamError(Exception):
    """Base class of this package's errors."""


class LocalServiceError(SegmentStreamError):
    """A local service (Kafka broker, Redis server) could not be started or reached."""


class InvalidEvent(SegmentStreamError):
    """A record on the input topic that breaks the contract; ``reason`` goes to the DLQ header."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
