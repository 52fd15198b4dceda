"""Errors raised by the API layer; mapped to HTTP answers in one place (the middleware)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Base class of the API errors."""


class RequestValidationError(ApiError):
    """Invalid request: rendered as 422 `{"detail": errors}`."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors


class ServiceUnavailable(ApiError):
    """Temporarily unable to answer: rendered as 503 `{"detail": message}` with Retry-After."""

    def __init__(self, message: str = "Service unavailable", retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
