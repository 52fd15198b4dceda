"""Errors of the developer tools."""

from __future__ import annotations

from streams.exceptions import SegmentStreamError


class LocalServiceError(SegmentStreamError):
    """A local service (Kafka broker, Redis server) could not be started or reached."""
