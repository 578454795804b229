"""
The operations site: one twisted.web leaf resource that dispatches on the
request path to handlers registered with L{route}.

A handler module (health, metrics, autoconfig, ...) declares its paths with
C{@route("/path")}; L{ROUTE_MODULES} lists the modules imported when the
site is built, so adding an endpoint is one module and one line here.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.server import Request

if TYPE_CHECKING:
    from netsuite.service import ServerContext

log = Logger(namespace="netsuite.http")

#: Modules whose C{@route}s make up the site, imported by L{OperationsSite}.
ROUTE_MODULES = [
    "netsuite.http.health",
    "netsuite.http.autoconfig",
    "netsuite.http.metrics",
    "netsuite.http.ready",
    "netsuite.http.status",
    "netsuite.http.acme",
]

#: What a handler returns: the body, or a Deferred that fires with it.
Body = bytes | defer.Deferred
Handler = Callable[[Request, "OperationsSite"], Body]


@dataclass
class Route:
    handler: Handler
    methods: tuple[bytes, ...]


#: Request path -> its L{Route}.
ROUTES: dict[bytes, Route] = {}
#: Path prefix (ending in C{/}) -> its L{Route}, for paths under it that no exact route has.
PREFIX_ROUTES: dict[bytes, Route] = {}


def route(*paths: str, methods: tuple[str, ...] = ("GET", "HEAD"),
          prefix: bool = False) -> Callable[[Handler], Handler]:
    """
    Decorator: C{handler(request, site)} answers C{paths}; with C{prefix}, every
    path under them too (C{/.well-known/acme-challenge/<token>}).
    """

    def register(handler: Handler) -> Handler:
        table = PREFIX_ROUTES if prefix else ROUTES
        for path in paths:
            if prefix and not path.endswith("/"):
                raise ValueError(f"a prefix route ends in '/': {path!r}")
            table[path.encode("ascii")] = Route(handler, tuple(m.encode() for m in methods))
        return handler

    return register


def find_route(path: bytes) -> Route | None:
    """The exact route for C{path}, else the longest prefix route above it."""
    found = ROUTES.get(path)
    if found is not None:
        return found
    best = b""
    for prefix in PREFIX_ROUTES:
        if path.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return PREFIX_ROUTES.get(best) if best else None


def json_body(request: Request, obj: Any, code: int = 200) -> bytes:
    """C{obj} as the JSON response, with its status code and content type."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(obj, sort_keys=True).encode() + b"\n"


def text_body(request: Request, text: str | bytes, content_type: bytes = b"text/plain",
              code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type + b"; charset=utf-8")
    return text.encode() if isinstance(text, str) else text


class Dispatch(resource.Resource):
    """Every path goes to its registered handler; unknown paths are 404, wrong methods 405."""

    isLeaf = True

    def __init__(self, site: OperationsSite):
        super().__init__()
        self.site = site

    def render(self, request: Request):
        request.setHeader(b"server", b"netsuite")  # not Twisted's name and version
        found = find_route(request.path)
        if found is None:
            return json_body(request, {"error": "not found"}, 404)
        method = request.method
        if method not in found.methods:
            request.setHeader(b"allow", b", ".join(found.methods))
            return json_body(request, {"error": "method not allowed"}, 405)
        try:
            body = found.handler(request, self.site)
        except Exception:
            log.failure("http {path}", path=request.path.decode("ascii", "replace"))
            return json_body(request, {"error": "internal error"}, 500)
        if not isinstance(body, defer.Deferred):
            return body
        body.addCallbacks(lambda data: self._finish(request, data),
                          lambda f: self._failed(request, f))
        return server.NOT_DONE_YET

    @staticmethod
    def _finish(request: Request, data: bytes) -> None:
        if request.finished or request.channel is None:  # the client left
            return
        request.write(data)
        request.finish()

    def _failed(self, request: Request, failure: Failure) -> None:
        log.failure("http {path}", failure, path=request.path.decode("ascii", "replace"))
        self._finish(request, json_body(request, {"error": "internal error"}, 500))


class BoundedRequest(server.Request):
    """
    A request whose body may not exceed the site's C{max_body}: twisted.web
    alone buffers a body of any size (to a temporary file past 100 KiB).
    Over the limit the client gets 413 and the connection is closed.
    """

    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            self._refuse()
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._limit():
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def _limit(self) -> int:
        return getattr(self.site, "max_body", 65536)

    def _refuse(self) -> None:
        if self._refused or self.channel is None:
            return
        self._refused = True
        _refuse_request(self.channel, 413, b"Content Too Large",
                        f"body over {self._limit()} bytes")


def _refuse_request(channel: http.HTTPChannel, code: int, phrase: bytes, what: str) -> None:
    """Answer C{code} with no body, log it, and close: the request is not read further."""
    client = getattr(channel.transport.getPeer(), "host", "?") if channel.transport else "?"
    log.info("http request refused: {what}, client={client} reason={reason}", what=what,
             event="refused", protocol="http", reason="request_too_large", client=client)
    transport: Any = channel.transport
    transport.write(b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    % (code, phrase))
    channel.loseConnection()


class BoundedChannel(http.HTTPChannel):
    """
    An HTTP/1.1 channel that says why it stops reading a request head:
    twisted.web closes the connection without a word on a request line or
    header line over C{MAX_LENGTH}, and answers a bare 400 when the head
    passes C{totalHeadersSize} or C{maxHeaders} fields.  Here the client
    gets 414 for the request line and 431 for the headers (RFC 9110
    15.5.15, RFC 6585 5).
    """

    _head_refused = False

    def lineReceived(self, line: bytes) -> None:
        if self._head_refused:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse_head(len(line))
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse_head(len(line))

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse_head(len(line))
            return False
        return super().headerReceived(line)

    def _refuse_head(self, length: int) -> None:
        if self._head_refused:
            return
        self._head_refused = True
        # Twisted's own flag: still on the request line (name-mangled attribute).
        if getattr(self, "_HTTPChannel__first_line", 0):
            _refuse_request(self, 414, b"URI Too Long", f"request line of {length}+ bytes")
        else:
            _refuse_request(self, 431, b"Request Header Fields Too Large",
                            f"request head over {self.totalHeadersSize} bytes "
                            f"or {self.maxHeaders} fields")


class OperationsSite(server.Site):
    """The site on the C{http} listener; handlers reach the server through C{ctx}."""

    noisy = False
    displayTracebacks = False

    requestFactory = BoundedRequest
    #: A plain HTTP/1.1 channel (not Twisted's HTTP/2-capable wrapper): the
    #: operations listener speaks HTTP/1.1 only, see L{acceptableProtocols}.
    protocol = BoundedChannel  # type: ignore[assignment]

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN: HTTP/1.1 only, even where the h2 package is installed."""
        return [b"http/1.1"]

    def __init__(self, ctx: ServerContext, listener: str, idle_timeout: float,
                 max_body: int = 65536):
        self.ctx = ctx
        self.listener = listener
        self.max_body = max_body
        super().__init__(Dispatch(self), timeout=idle_timeout, reactor=ctx.reactor)
        for name in ROUTE_MODULES:
            # A module may start what its pages need (a sampler) when a site is built.
            built = getattr(importlib.import_module(name), "site_built", None)
            if built is not None:
                built(self)

    def log(self, request: http.Request) -> None:
        """Access lines through twisted.logger, at debug: health checks come every few seconds."""
        log.debug("http {method} {path} {code} {client}",
                  method=request.method.decode("ascii", "replace"),
                  path=request.uri.decode("ascii", "replace"), code=request.code,
                  client=getattr(request.getClientAddress(), "host", "?"))
