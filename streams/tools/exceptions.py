"""Errors of the developer tools."""

from __future__ import annotations

from streams.exceptions import SegmentStreamError


class LocalServiceError(SegmentStreamError):
    """A local service (Kafka broker, Redis server) could not be started or reached."""


class MigrationRefused(SegmentStreamError):
    """`segments migrate` cannot do what it is asked (the target holds data, an invalid partition
    count or app id, no source): nothing was written; the command exits with code 2."""

    exit_code = 2
