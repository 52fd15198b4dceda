"""The API's errors, and the one middleware where every error becomes an HTTP answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

JSON = "application/json"


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


class Unauthorized(ApiError):
    """No valid credentials: rendered as 401 with ``WWW-Authenticate: Bearer``."""

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        challenge = 'Bearer realm="segment-stream"'
        self.challenge = challenge + (f', error="{error}"' if error else "")


class Forbidden(ApiError):
    """Valid credentials that do not cover the request: rendered as 403."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON,
                        headers=headers)


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """The one place where errors become HTTP responses."""
    try:
        return await handler(request)
    except RequestValidationError as exc:
        return json_response({"detail": exc.errors}, status=422)
    except Unauthorized as exc:
        return json_response({"detail": exc.message}, status=401,
                             headers={"WWW-Authenticate": exc.challenge})
    except Forbidden as exc:
        return json_response({"detail": exc.message}, status=403)
    except ServiceUnavailable as exc:
        return json_response({"detail": str(exc)}, status=503,
                             headers={"Retry-After": str(exc.retry_after_s)})
