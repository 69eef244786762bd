"""HTTP/1.1 for the Python host, on asyncio's Protocol API: keep-alive, pipelining (answered in order),
chunked request and response bodies, and the limits a hostile client meets (head size and count,
body size, timeouts for a slow head, a slow body and a client that stops reading).

Written to RFC 9112 (message syntax) and RFC 9110 (semantics); sections are cited where a rule applies.
Error answers are the catalog's JSON body (`{"error", "error_code", "detail"}`, a superset of truss's
`{"error"}`) with truss's `X-BASETEN-ERROR-SOURCE` / `X-BASETEN-ERROR-CODE` headers.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Set, Tuple

# The codes of src/core/errors.ts this host answers with: status, default message and truss's error code
# class (600 the model, 700 the client, 500 the server itself). A test checks them against the catalog.
ERRORS: Dict[str, Tuple[int, str, int]] = {
    "invalid_request": (400, "The request is not valid.", 700),
    "invalid_json": (400, "The request body is not valid JSON.", 700),
    "route_not_found": (404, "No such route.", 700),
    "method_not_allowed": (405, "This method is not allowed on this route.", 700),
    "request_timeout": (408, "The request was not received in time.", 700),
    "model_definition_error": (412, "The model does not meet the truss Model contract.", 600),
    "payload_too_large": (413, "The request body is too large.", 700),
    "unsupported_media_type": (415, "The request body's content type is not supported.", 700),
    "expectation_failed": (417, "The request's Expect header names an unsupported expectation.", 700),
    "websocket_upgrade_required": (
        426,
        "This route is a websocket: send GET with Upgrade: websocket (RFC 6455, version 13).",
        700,
    ),
    "rate_limited": (429, "Too many requests.", 600),
    "headers_too_large": (431, "The request header fields are too large.", 700),
    "internal_error": (500, "Internal error.", 500),
    "model_unavailable": (503, "No replica is ready to serve this request.", 600),
    "service_unavailable": (503, "The service is not available.", 500),
}
TRUSS_SERVER_SOURCE = "04"
# How long a refused connection keeps reading (and dropping) what its client still sends before closing.
LINGER_SECONDS = 1.0

# RFC 9110 §5.6.2: token = 1*tchar.
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_FIELD_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE = re.compile(rb"^[0-9A-Fa-f]{1,16}$")
_REASONS = {s.value: s.phrase.encode("latin-1") for s in HTTPStatus}


@dataclass
class Limits:
    # Request line plus header fields (Node's default, --max-http-header-size, is the same 16 KiB).
    max_head_bytes: int = 16 * 1024
    max_headers: int = 100
    max_body_bytes: int = 32 * 1024 * 1024
    # A new connection's first request head must arrive within this; slowloris is cut here.
    header_timeout: float = 30.0
    # An idle keep-alive connection is closed after this (Node's keepAliveTimeout is 5 s too).
    keep_alive_timeout: float = 5.0
    # The longest wait for a client's next body bytes, or for it to read what was sent.
    io_timeout: float = 60.0
    max_connections: int = 1024


class Request:
    __slots__ = ("method", "target", "path", "version", "headers", "body", "keep_alive")

    def __init__(self, method: str, target: str, version: int, headers: Dict[str, str]) -> None:
        self.method = method
        self.target = target
        self.path = target.split("?", 1)[0]
        self.version = version
        self.headers = headers
        self.body = b""
        connection = headers.get("connection", "").lower()
        tokens = {t.strip() for t in connection.split(",")} if connection else set()
        # RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive".
        self.keep_alive = "close" not in tokens if version == 11 else "keep-alive" in tokens


class HttpError(Exception):
    """A request the server refuses before the application sees it; the connection is closed after."""

    def __init__(self, code: str, message: Optional[str] = None, detail: Any = None) -> None:
        super().__init__(message or ERRORS[code][1])
        self.code = code
        self.detail = detail


def error_body(code: str, message: Optional[str] = None, detail: Any = None) -> bytes:
    body = {"error": message or ERRORS[code][1], "error_code": code, "detail": detail}
    return json.dumps(body, default=str, separators=(",", ":")).encode("utf-8")


def error_headers(code: str, truss_code: Optional[int] = None) -> List[Tuple[str, str]]:
    return [
        ("x-baseten-error-source", TRUSS_SERVER_SOURCE),
        ("x-baseten-error-code", "%03d" % (truss_code if truss_code is not None else ERRORS[code][2])),
    ]


class _DateCache:
    """RFC 9110 §6.6.1: an origin server with a clock sends Date; formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value


Handler = Callable[[Request, "Connection"], Awaitable[None]]


class Server:
    """Listens and owns the connections; `handler` answers each request through its Connection."""

    def __init__(self, handler: Handler, limits: Limits, on_fault: Callable[[BaseException], None]) -> None:
        self.handler = handler
        self.limits = limits
        self.on_fault = on_fault
        self.connections: Set[Connection] = set()
        self.draining = False
        self.dates = _DateCache()
        self.listener: Optional[asyncio.base_events.Server] = None
        self._all_closed: Optional[asyncio.Future] = None
        self.read_high_water = max(limits.max_head_bytes, 256 * 1024)

    def protocol(self) -> "Connection":
        return Connection(self)

    async def listen_tcp(self, host: str, port: int) -> str:
        loop = asyncio.get_running_loop()
        self.listener = await loop.create_server(self.protocol, host, port, reuse_address=True, backlog=1024)
        sockname = self.listener.sockets[0].getsockname()
        address, bound = sockname[0], sockname[1]
        return f"[{address}]:{bound}" if ":" in address else f"{address}:{bound}"

    async def listen_unix(self, path: str) -> str:
        loop = asyncio.get_running_loop()
        self.listener = await loop.create_unix_server(self.protocol, path, backlog=1024)
        return f"unix:{path}"

    def forget(self, connection: "Connection") -> None:
        self.connections.discard(connection)
        if not self.connections and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)

    async def drain(self, timeout: float) -> int:
        """Stops accepting, lets requests in flight finish (each answered with `Connection: close`),
        closes idle connections; returns how many had to be cut when `timeout` ran out."""
        self.draining = True
        if self.listener is not None:
            self.listener.close()
        for connection in list(self.connections):
            connection.close_if_idle()
        if self.connections:
            self._all_closed = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._all_closed), timeout)
            except asyncio.TimeoutError:
                pass
        cut = len(self.connections)
        for connection in list(self.connections):
            connection.abort()
        return cut


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(False)


class Connection(asyncio.Protocol):
    """One client connection: parses requests one at a time and hands each to the server's handler."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.transport: Optional[asyncio.Transport] = None
        self.buf = bytearray()
        self.eof = False
        self.gone: asyncio.Future = self.loop.create_future()
        self.request: Optional[Request] = None
        self.idle = True
        self.close_after = False
        self.chunked = False
        self.started = False
        self._waiter: Optional[asyncio.Future] = None
        self._drain_waiter: Optional[asyncio.Future] = None
        self._write_paused = False
        self._read_paused = False
        self._task: Optional[asyncio.Task] = None
        self._registered = False
        # A websocket this connection was upgraded to (websocket.py); told to close 1001 on drain.
        self.websocket: Any = None

    # -- asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.server.connections) >= self.limits.max_connections or self.server.draining:
            body = error_body("service_unavailable", "The model server has too many connections.")
            head = self._head(503, b"application/json", len(body), error_headers("service_unavailable"), True, 11)
            transport.write(head + body)  # type: ignore[attr-defined]
            transport.close()
            return
        self.server.connections.add(self)
        self._registered = True
        self._task = self.loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > self.server.read_high_water and not self._read_paused:
            # Nobody is reading (a request is being answered): stop taking bytes until someone does.
            self._read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def eof_received(self) -> bool:
        # A client that closes its side has gone away: its answer is not sent (the gateway does the same).
        self._gone()
        return False

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._gone()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)
        if self._registered:
            self._registered = False
            self.server.forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _gone(self) -> None:
        self.eof = True
        if not self.gone.done():
            self.gone.set_result(None)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    # -- reading -----------------------------------------------------------------------------------------

    async def _wait(self, timeout: float) -> bool:
        """Waits for more bytes (or the end); False when `timeout` passed first."""
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        future = self.loop.create_future()
        self._waiter = future
        handle = self.loop.call_later(max(timeout, 0.0), _expire, future)
        try:
            return await future
        finally:
            handle.cancel()
            self._waiter = None

    async def _run(self) -> None:
        first = True
        try:
            while True:
                request = await self._read_request(first)
                if request is None:
                    break
                first = False
                self.idle = False
                self.request = request
                self.close_after = not request.keep_alive
                self.started = False
                await self.server.handler(request, self)
                self.idle = True
                if self.close_after or self.eof or self.transport.is_closing():  # type: ignore[union-attr]
                    break
        except HttpError as err:
            self._refuse(err)
            await self._linger()
        except _ClientGone:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - a fault in the host must not leave the socket open
            self.server.on_fault(err)
            self.abort()
        finally:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

    async def _read_request(self, first: bool) -> Optional[Request]:
        limits = self.limits
        timeout = limits.header_timeout if first else limits.keep_alive_timeout
        deadline = self.loop.time() + timeout
        started = bool(self.buf)
        while True:
            # RFC 9112 §2.2: empty lines before a request line are ignored.
            while self.buf[:2] == b"\r\n":
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end != -1:
                break
            if len(self.buf) > limits.max_head_bytes:
                raise HttpError("headers_too_large", None, {"limit_bytes": limits.max_head_bytes})
            if self.eof:
                return None
            if self.server.draining and not self.buf:
                return None
            if self.buf and not started:
                # The first byte of a request on a kept-alive connection: the head now has the header
                # timeout to arrive in full.
                started = True
                deadline = self.loop.time() + limits.header_timeout
            if not await self._wait(deadline - self.loop.time()) and not self.eof:
                if self.buf:
                    raise HttpError("request_timeout", "The request head was not received in time.")
                return None
        if end > limits.max_head_bytes:
            raise HttpError("headers_too_large", None, {"limit_bytes": limits.max_head_bytes})
        head = bytes(self.buf[:end])
        del self.buf[: end + 4]
        request, length, chunked = self._parse_head(head)
        expect = request.headers.get("expect")
        if expect is not None:
            # RFC 9110 §10.1.1: 100-continue is the only expectation defined.
            if expect.lower() != "100-continue":
                raise HttpError("expectation_failed", None, {"expect": expect})
        if length is not None and length > limits.max_body_bytes:
            raise HttpError("payload_too_large", None, {"limit_bytes": limits.max_body_bytes})
        if (length or chunked) and expect is not None and request.version == 11 and not self.buf:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        if chunked:
            request.body = await self._read_chunked()
        elif length:
            request.body = await self._read_exact(length)
        return request

    def _parse_head(self, head: bytes) -> Tuple[Request, Optional[int], bool]:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not _TOKEN.match(parts[0]):
            raise HttpError("invalid_request", "The request line is not METHOD TARGET HTTP-VERSION.")
        method, target, version = parts
        if version == b"HTTP/1.1":
            v = 11
        elif version == b"HTTP/1.0":
            v = 10
        else:
            raise HttpError("invalid_request", "Only HTTP/1.0 and HTTP/1.1 are served.")
        # RFC 9112 §3.2.1: origin-form; anything else is not for an origin server on a private port.
        if not target.startswith(b"/") or _FIELD_VALUE_BAD.search(target) or b" " in target:
            raise HttpError("invalid_request", "The request target must be an absolute path.")
        if len(lines) - 1 > self.limits.max_headers:
            raise HttpError("headers_too_large", None, {"limit_fields": self.limits.max_headers})
        headers: Dict[str, str] = {}
        lengths: List[bytes] = []
        encodings: List[bytes] = []
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                # RFC 9112 §5.2: obsolete line folding is refused.
                raise HttpError("invalid_request", "Obsolete line folding in a header field is not accepted.")
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.match(name):
                raise HttpError("invalid_request", "A header field is malformed.")
            value = value.strip(b" \t")
            if _FIELD_VALUE_BAD.search(value):
                raise HttpError("invalid_request", "A header field value holds control characters.")
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            if key == "content-length":
                lengths.append(value)
            elif key == "transfer-encoding":
                encodings.append(value)
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if v == 11 and "host" not in headers:
            # RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
            raise HttpError("invalid_request", "An HTTP/1.1 request needs a Host header.")
        length: Optional[int] = None
        chunked = False
        if encodings and lengths:
            # RFC 9112 §6.1: both framings in one message is how requests are smuggled; refused.
            raise HttpError("invalid_request", "A request cannot have both Content-Length and Transfer-Encoding.")
        if encodings:
            coding = b",".join(encodings).replace(b" ", b"").replace(b"\t", b"").lower()
            if coding != b"chunked":
                raise HttpError("invalid_request", "Only the chunked transfer coding is accepted.")
            if v == 10:
                raise HttpError("invalid_request", "Transfer-Encoding is not defined for HTTP/1.0.")
            chunked = True
        if lengths:
            if len(lengths) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
                raise HttpError("invalid_request", "Content-Length must be one decimal number.")
            length = int(lengths[0])
        request = Request(method.decode("ascii"), target.decode("latin-1"), v, headers)
        return request, length, chunked

    async def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if self.eof:
                raise _ClientGone()
            if not await self._wait(self.limits.io_timeout) and not self.eof:
                raise HttpError("request_timeout", "The request body was not received in time.")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def _read_line(self, limit: int) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end != -1:
                if end > limit:
                    break
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                return line
            if len(self.buf) > limit:
                break
            if self.eof:
                raise _ClientGone()
            if not await self._wait(self.limits.io_timeout) and not self.eof:
                raise HttpError("request_timeout", "The request body was not received in time.")
        raise HttpError("invalid_request", "A chunk-size or trailer line is too long.")

    async def _read_chunked(self) -> bytes:
        """RFC 9112 §7.1: chunk-size [; ext] CRLF data CRLF ..., 0 CRLF, trailer fields, CRLF."""
        body = bytearray()
        limit = self.limits.max_body_bytes
        while True:
            line = await self._read_line(4096)
            size_text = line.split(b";", 1)[0].rstrip(b" \t")
            if not _CHUNK_SIZE.match(size_text):
                raise HttpError("invalid_request", "A chunk size is not a hexadecimal number.")
            size = int(size_text, 16)
            if size == 0:
                break
            if len(body) + size > limit:
                raise HttpError("payload_too_large", None, {"limit_bytes": limit})
            data = await self._read_exact(size + 2)
            if data[-2:] != b"\r\n":
                raise HttpError("invalid_request", "A chunk does not end with CRLF.")
            body += data[:-2]
        trailer_bytes = 0
        while True:
            line = await self._read_line(self.limits.max_head_bytes)
            if line == b"":
                return bytes(body)
            trailer_bytes += len(line) + 2
            if trailer_bytes > self.limits.max_head_bytes:
                raise HttpError("headers_too_large", None, {"limit_bytes": self.limits.max_head_bytes})

    # -- answering ---------------------------------------------------------------------------------------

    def _head(
        self,
        status: int,
        content_type: bytes,
        length: Optional[int],
        extra: Iterable[Tuple[str, str]],
        close: bool,
        version: int,
    ) -> bytes:
        parts = [
            b"HTTP/1.1 %d %s\r\ndate: %s\r\ncontent-type: %s\r\n"
            % (status, _REASONS.get(status, b"Unknown"), self.server.dates.get(), content_type)
        ]
        if length is not None:
            parts.append(b"content-length: %d\r\n" % length)
        elif version == 11:
            parts.append(b"transfer-encoding: chunked\r\n")
        for name, value in extra:
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        if close:
            parts.append(b"connection: close\r\n")
        elif version == 10:
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _closing(self) -> bool:
        if self.server.draining:
            # While draining, each answer closes its connection so clients reconnect elsewhere.
            self.close_after = True
        return self.close_after

    def send(
        self,
        status: int,
        content_type: bytes,
        body: bytes,
        extra: Iterable[Tuple[str, str]] = (),
        close: bool = False,
    ) -> None:
        """A complete answer to the current request."""
        if self.started or self.transport is None or self.transport.is_closing():
            return
        self.started = True
        request = self.request
        if close:
            self.close_after = True
        head = self._head(status, content_type, len(body), extra, self._closing(), request.version if request else 11)
        if request is not None and request.method == "HEAD":
            self.transport.write(head)
        else:
            self.transport.write(head + body)

    def send_error(
        self,
        code: str,
        message: Optional[str] = None,
        detail: Any = None,
        truss_code: Optional[int] = None,
        extra: Iterable[Tuple[str, str]] = (),
        close: bool = False,
    ) -> None:
        """The catalog's error body; once a streamed answer is under way it can only be cut off."""
        if self.started:
            self.abort()
            return
        status = ERRORS[code][0]
        headers = error_headers(code, truss_code) + list(extra)
        self.send(status, b"application/json", error_body(code, message, detail), headers, close)

    async def _linger(self) -> None:
        """Closes after a refusal the way a careful server does (nginx's lingering close; RFC 9112 §9.6): end
        this side, then read and drop what the client is still sending for a moment before closing. Closing
        at once would make the kernel answer the client's unread bytes with a reset, which can discard the
        refusal before the client has read it."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        deadline = self.loop.time() + LINGER_SECONDS
        while not self.eof and self.loop.time() < deadline:
            self.buf.clear()
            if self._read_paused:
                self._read_paused = False
                transport.resume_reading()
            await asyncio.sleep(0.02)

    def _refuse(self, err: HttpError) -> None:
        # The request could not be read, so there is none to answer in kind: a plain HTTP/1.1 GET stands in.
        self.request = Request("GET", "/", 11, {})
        self.started = False
        self.send_error(err.code, str(err), err.detail, close=True)

    def start_stream(self, status: int, content_type: bytes, extra: Iterable[Tuple[str, str]] = ()) -> None:
        """Sends the head of a streamed answer: chunked (RFC 9112 §7.1), or for an HTTP/1.0 client a body
        that ends with the connection."""
        request = self.request
        version = request.version if request is not None else 11
        self.chunked = version == 11
        if not self.chunked:
            self.close_after = True
        self.started = True
        self.transport.write(self._head(status, content_type, None, extra, self._closing(), version))  # type: ignore[union-attr]

    async def stream_write(self, data: bytes) -> bool:
        """Writes one piece of a streamed answer; False when the client has gone or stopped reading."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.gone.done():
            return False
        if not data:
            return True
        if self.chunked:
            transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            transport.write(data)
        if self._write_paused:
            return await self._drain()
        return True

    def end_stream(self) -> None:
        if self.chunked and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"0\r\n\r\n")

    async def _drain(self) -> bool:
        """Waits for the client to read what was sent; cuts it off after `io_timeout` without progress."""
        future = self.loop.create_future()
        self._drain_waiter = future
        handle = self.loop.call_later(self.limits.io_timeout, _expire, future)
        try:
            ok = await future
        finally:
            handle.cancel()
            self._drain_waiter = None
        if not ok:
            self.abort()
        return ok and not self.gone.done()

    def close_if_idle(self) -> None:
        if self.websocket is not None:
            self.websocket.going_away()
            return
        if self.idle and not self.buf and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _ClientGone(Exception):
    """The client closed the connection before its request was complete."""
