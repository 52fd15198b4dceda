"""The base of every error the product raises on purpose; each package has its own
``exceptions`` module with the errors it raises."""


class SegmentStreamError(Exception):
    """Base class of the product's errors."""
