"""Who may ask what (contract section 10).

Public routes need an API key (api/keys.py) when the worker has a keys file: every route but
``OPEN`` ones, so that a route added later is protected unless said otherwise. The internal
route needs the cluster secret: the asking worker signs its request (method, the peer's URL
and path, the query, a timestamp and a nonce) with an HMAC, the peer refuses a request
signed otherwise, older than ``WINDOW_S`` or seen before, and signs its answer with the
request's nonce, so that the asker merges rows only from a worker holding the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Middleware

from api.errors import Forbidden, ServiceUnavailable, Unauthorized
from api.keys import ALL_PROGRAMS, ApiKey, KeyRing

logger = logging.getLogger(__name__)

INTERNAL_ROUTE = "/internal/segments"
SCHEMAS_ROUTE = "/schemas/{name}"
# Routes anyone may read: the probes, the API's description, the page's code and the topics'
# JSON Schemas (formats published in the repository, no tenant's data: like /openapi.json,
# and Kafka consumers that hold no API key need them).
OPEN_ROUTES = frozenset({"/healthz", "/livez", "/readyz", "/openapi.json", "/static",
                         SCHEMAS_ROUTE})
PAGE_ROUTE = "/"
METRICS_ROUTE = "/metrics"

TIMESTAMP_HEADER = "Segments-Timestamp"
NONCE_HEADER = "Segments-Nonce"
SIGNATURE_HEADER = "Segments-Signature"
WINDOW_S = 30.0
_TIMESTAMP = re.compile(r"[0-9]{1,16}")
_NONCE = re.compile(r"[0-9a-f]{16,64}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
MAX_NONCES = 200_000  # nonces seen in the last WINDOW_S: far more than fan-outs in that time

_REQUEST_KEY = web.RequestKey("api_key", ApiKey)  # the key that authenticated the request
_REQUEST_TOKEN = web.RequestKey("token", str)  # to look the key up again (a long stream)
_REQUEST_KEYS = web.RequestKey("keys", KeyRing)
_REQUEST_NONCE = web.RequestKey("nonce", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = (headers.get("Authorization") or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def authorize(request: web.Request, program: str) -> None:
    """Raise Forbidden unless the request's key (when keys are asked for) covers ``program``."""
    key = request.get(_REQUEST_KEY)
    if key is not None and not key.covers(program):
        raise Forbidden(f"this API key does not cover program {program!r}")


def still_authorized(request: web.Request, program: str) -> bool:
    """Whether the request's key (when keys are asked for) is still valid and covers
    ``program``: a stream opened with a key ends when the key is revoked."""
    token = request.get(_REQUEST_TOKEN)
    if token is None:
        return True
    key = request[_REQUEST_KEYS].find(token)
    return key is not None and key.covers(program)


def _canonical(method: str, url: str, query: Iterable[tuple[str, str]], timestamp: str,
               nonce: str) -> bytes:
    # (surrogateescape: a query's undecodable bytes come back as they were sent)
    query_text = urlencode(sorted(query), encoding="utf-8", errors="surrogateescape")
    parts = [p.encode("utf-8", "surrogateescape")
             for p in ("request", method, url, query_text, timestamp, nonce)]
    # Each part length-prefixed: no two different requests read as the same bytes.
    return b"".join(b"%d:%s\n" % (len(p), p) for p in parts)


def _derive(secret: str) -> bytes:
    return hashlib.sha256(b"segment-stream cluster\n" + secret.encode()).digest()


class ClusterAuth:
    """Signs this worker's internal requests and answers, and checks its peers'."""

    def __init__(self, secret: str, self_url: str, clock: Callable[[], float] = time.time,
                 max_nonces: int = MAX_NONCES, previous: str = "") -> None:
        """``previous``: a secret being rotated out: accepted, never used to sign."""
        self._key = _derive(secret)
        self._accepted = (self._key, _derive(previous)) if previous else (self._key,)
        self._self_url = self_url
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max_nonces = max_nonces

    def _mac(self, data: bytes, key: bytes | None = None) -> str:
        return hmac.new(key or self._key, data, hashlib.sha256).hexdigest()

    def _valid(self, data: bytes, given: str) -> bool:
        given_bytes = given.encode("ascii", "replace")  # (checked to be hex by the callers)
        return any([hmac.compare_digest(self._mac(data, key).encode(), given_bytes)
                    for key in self._accepted])

    def request_headers(self, url: str, path: str, query: Mapping[str, str]
                        ) -> dict[str, str]:
        """Headers that authenticate a GET of ``url + path`` with ``query``."""
        timestamp = str(int(self._clock() * 1000))
        nonce = secrets.token_hex(16)
        mac = self._mac(_canonical("GET", url + path, query.items(), timestamp, nonce))
        return {TIMESTAMP_HEADER: timestamp, NONCE_HEADER: nonce, SIGNATURE_HEADER: mac}

    def verify_request(self, request: web.Request) -> str:
        """The request's nonce, if a worker holding the secret signed it for this worker,
        lately and once; else raise Unauthorized."""
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        nonce = request.headers.get(NONCE_HEADER, "")
        given = request.headers.get(SIGNATURE_HEADER, "")
        if not (_TIMESTAMP.fullmatch(timestamp) and _NONCE.fullmatch(nonce)
                and _SIGNATURE.fullmatch(given)):
            raise Unauthorized("internal requests need the cluster's signature")
        signed = _canonical(request.method, self._self_url + request.path,
                            request.query.items(), timestamp, nonce)
        if not self._valid(signed, given):
            raise Unauthorized("internal request signed with another secret, for another "
                               "worker or altered")
        now = self._clock()
        signed_at = int(timestamp) / 1000
        if abs(now - signed_at) > WINDOW_S:
            raise Unauthorized(f"internal request signed more than {WINDOW_S:.0f}s away from "
                               "this worker's clock")
        self._remember(nonce, signed_at, now)
        return nonce

    def _remember(self, nonce: str, signed_at: float, now: float) -> None:
        """A nonce is remembered until its request is out of the window (refused anyway); when
        more fit in the window than are kept, requests are refused, no nonce is forgotten."""
        seen = self._seen
        while seen and next(iter(seen.values())) < now - WINDOW_S:
            seen.popitem(last=False)
        if nonce in seen:
            raise Unauthorized("internal request replayed")
        if len(seen) >= self._max_nonces:
            raise ServiceUnavailable("too many internal requests", 1)
        seen[nonce] = signed_at

    def answer_signature(self, nonce: str, body: bytes) -> str:
        return self._mac(b"answer\n" + nonce.encode() + b"\n" + body)

    def verify_answer(self, nonce: str, body: bytes, signature: str | None) -> bool:
        return signature is not None and self._valid(
            b"answer\n" + nonce.encode() + b"\n" + body, signature)


def sign_answer(request: web.Request, response: web.Response,
                cluster: ClusterAuth | None) -> web.Response:
    """Sign an internal answer with the nonce of the request it answers."""
    nonce = request.get(_REQUEST_NONCE)
    if cluster is not None and nonce is not None and isinstance(response.body, bytes):
        response.headers[SIGNATURE_HEADER] = cluster.answer_signature(nonce, response.body)
    return response


def auth_middleware(keys: KeyRing | None, cluster: ClusterAuth | None,
                    page: bytes) -> Middleware:
    """``page``: the body of the page's 401 (the page itself, which asks for a key)."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else None
        if route is None or route in OPEN_ROUTES:  # (None: not found)
            return await handler(request)
        if route == INTERNAL_ROUTE:
            if cluster is not None:
                request[_REQUEST_NONCE] = cluster.verify_request(request)
            return await handler(request)
        ring = keys
        if ring is None:
            return await handler(request)
        token = bearer_token(request.headers)
        key = ring.find(token) if token is not None else None
        if key is None or token is None:
            if route == PAGE_ROUTE:
                return web.Response(body=page, status=401, content_type="text/html",
                                    charset="utf-8", headers={
                                        "WWW-Authenticate": 'Bearer realm="segment-stream"',
                                        "Cache-Control": "no-cache"})
            raise Unauthorized("an API key is needed: Authorization: Bearer <key>"
                               if token is None else "unknown API key",
                               None if token is None else "invalid_token")
        request[_REQUEST_KEY] = key
        request[_REQUEST_TOKEN] = token
        request[_REQUEST_KEYS] = ring
        if route == METRICS_ROUTE and ALL_PROGRAMS not in key.programs:
            raise Forbidden("/metrics needs a key that covers every program ('*')")
        if route == PAGE_ROUTE and request.query.get("program_id"):
            authorize(request, request.query["program_id"])
        return await handler(request)

    return authenticate
