"""RFC 6455 websockets for the Python host: the server handshake (§4.2) on a connection of http11.py, then
frames both ways (§5): masked client frames, text and binary messages (fragmented ones reassembled, up to
MAX_MESSAGE_BYTES), pings answered, the closing handshake (§7). The model's `websocket(self, ws)` gets a
WebSocket with the methods truss's (Starlette's) WebSocket has: receive_text/bytes/json, send_text/bytes/json,
iter_text/bytes, close; a client that closes raises WebSocketDisconnect from a receive."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import struct
from typing import Any, AsyncIterator, Dict, Optional, Union

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# As the JavaScript host (src/runtime/realtime.ts WEBSOCKET_MAX_MESSAGE_BYTES).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# How long a close we started waits for the client's close before the socket is closed anyway.
CLOSE_TIMEOUT = 5.0

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def valid_key(key: Optional[str]) -> bool:
    """§4.2.1: a base64-encoded 16-byte value."""
    if key is None or len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False


def is_upgrade(headers: Dict[str, str]) -> bool:
    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    return "upgrade" in connection and headers.get("upgrade", "").strip().lower() == "websocket"


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """A server frame: final, unmasked (§5.1)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def _unmask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return payload
    n = len(payload)
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")


class WebSocketDisconnect(Exception):
    """The connection ended: `code` is the client's close code (1005 when its close had none), or 1006 when
    the socket went away without a close frame (never sent on the wire, §7.4.1)."""

    def __init__(self, code: int = 1000, reason: str = "") -> None:
        super().__init__(f"websocket closed with {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


class _ProtocolError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class WebSocket:
    """One accepted websocket over an http11 Connection (whose buffer and transport it takes over)."""

    def __init__(self, conn: Any, path: str, headers: Dict[str, str]) -> None:
        self._conn = conn
        self.url_path = path
        self.headers = headers
        self._sent_close = False
        self._closed: Optional[WebSocketDisconnect] = None

    # -- what truss's WebSocket offers -------------------------------------------------------------------

    async def accept(self, subprotocol: Optional[str] = None) -> None:
        """The host has accepted the handshake before the handler runs; kept for code written for truss."""

    async def receive(self) -> Dict[str, Any]:
        """The next message as {"type": "text", "data": str} or {"type": "binary", "data": bytes}."""
        if self._closed is not None:
            raise self._closed
        try:
            return await self._read_message()
        except _ProtocolError as err:
            await self._close_now(err.code, err.reason)
            self._closed = WebSocketDisconnect(err.code, err.reason)
            raise self._closed from None

    async def receive_text(self) -> str:
        message = await self.receive()
        if message["type"] != "text":
            raise TypeError("expected a text message, received a binary one")
        return message["data"]

    async def receive_bytes(self) -> bytes:
        message = await self.receive()
        if message["type"] != "binary":
            raise TypeError("expected a binary message, received a text one")
        return message["data"]

    async def receive_json(self) -> Any:
        message = await self.receive()
        data = message["data"]
        return json.loads(data if isinstance(data, str) else data.decode("utf-8"))

    async def iter_text(self) -> AsyncIterator[str]:
        try:
            while True:
                yield await self.receive_text()
        except WebSocketDisconnect:
            pass

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        try:
            while True:
                yield await self.receive_bytes()
        except WebSocketDisconnect:
            pass

    async def send_text(self, data: str) -> None:
        await self._send(OP_TEXT, data.encode("utf-8"))

    async def send_bytes(self, data: Union[bytes, bytearray, memoryview]) -> None:
        await self._send(OP_BINARY, bytes(data))

    async def send_json(self, data: Any) -> None:
        await self.send_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False))

    async def send(self, data: Union[str, bytes, bytearray, memoryview]) -> None:
        """A string as a text message, bytes as binary (as the JavaScript host's ws.send)."""
        if isinstance(data, str):
            await self.send_text(data)
        else:
            await self.send_bytes(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Starts the closing handshake and waits (up to CLOSE_TIMEOUT) for the client's close."""
        if self._sent_close:
            return
        self._send_close(code, reason)
        if self._closed is None:
            self._closed = WebSocketDisconnect(code, reason)
            try:
                await asyncio.wait_for(self._await_close(), CLOSE_TIMEOUT)
            except (asyncio.TimeoutError, _ProtocolError, WebSocketDisconnect):
                pass
        self._finish()

    # -- the host's side ---------------------------------------------------------------------------------

    def going_away(self) -> None:
        """The host is stopping: close 1001 (the socket closes when the client answers or the drain ends)."""
        if not self._sent_close:
            self._send_close(1001, "model server stopping")

    async def finish(self, err: Optional[BaseException]) -> None:
        """After the handler: 1000 if it returned, 1011 if it raised; the socket is closed."""
        if err is not None and not isinstance(err, WebSocketDisconnect):
            await self.close(1011, "handler failed")
        else:
            await self.close(1000)
        self._finish()

    def _finish(self) -> None:
        transport = self._conn.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def _send_close(self, code: int, reason: str) -> None:
        self._sent_close = True
        payload = b"" if code == 1005 else struct.pack("!H", code) + reason.encode("utf-8")[:123]
        self._write(encode_frame(OP_CLOSE, payload))

    async def _close_now(self, code: int, reason: str) -> None:
        if not self._sent_close:
            self._send_close(code, reason)
        self._finish()

    async def _await_close(self) -> None:
        while True:
            await self._read_message()

    def _write(self, data: bytes) -> bool:
        transport = self._conn.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(data)
        return True

    async def _send(self, opcode: int, payload: bytes) -> None:
        if self._sent_close or self._conn.gone.done():
            raise self._closed or WebSocketDisconnect(1006, "the client went away")
        self._write(encode_frame(opcode, payload))
        if self._conn._write_paused and not await self._conn._drain():
            raise WebSocketDisconnect(1006, "the client stopped reading")

    async def _read_exact(self, n: int) -> bytes:
        conn = self._conn
        while len(conn.buf) < n:
            if conn.eof:
                self._closed = self._closed or WebSocketDisconnect(1006, "the client went away")
                raise self._closed
            # No read timeout: a websocket may be quiet for long (the ingress has its idle timeout).
            await conn._wait(3600.0)
        data = bytes(conn.buf[:n])
        del conn.buf[:n]
        return data

    async def _read_frame(self) -> tuple:
        b0, b1 = await self._read_exact(2)
        fin, rsv, opcode = b0 & 0x80, b0 & 0x70, b0 & 0x0F
        if rsv:
            raise _ProtocolError(1002, "reserved bits set without an extension")
        if not b1 & 0x80:
            raise _ProtocolError(1002, "client frames must be masked")
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self._read_exact(8))
        if opcode >= 0x8:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise _ProtocolError(1002, f"unknown opcode {opcode}")
            if not fin or length > 125:
                raise _ProtocolError(1002, "control frames must be whole and at most 125 bytes")
        elif opcode not in (OP_CONTINUATION, OP_TEXT, OP_BINARY):
            raise _ProtocolError(1002, f"unknown opcode {opcode}")
        if length > MAX_MESSAGE_BYTES:
            raise _ProtocolError(1009, "message too big")
        key = await self._read_exact(4)
        payload = _unmask(await self._read_exact(length), key)
        return bool(fin), opcode, payload

    async def _read_message(self) -> Dict[str, Any]:
        kind: Optional[int] = None
        parts = bytearray()
        while True:
            fin, opcode, payload = await self._read_frame()
            if opcode == OP_PING:
                if not self._sent_close:
                    self._write(encode_frame(OP_PONG, payload))
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                raise self._on_close(payload)
            if opcode == OP_CONTINUATION:
                if kind is None:
                    raise _ProtocolError(1002, "a continuation frame outside a fragmented message")
            elif kind is not None:
                raise _ProtocolError(1002, "a new message inside a fragmented one")
            else:
                kind = opcode
            if len(parts) + len(payload) > MAX_MESSAGE_BYTES:
                raise _ProtocolError(1009, "message too big")
            parts += payload
            if fin:
                break
        if kind == OP_TEXT:
            try:
                return {"type": "text", "data": parts.decode("utf-8")}
            except UnicodeDecodeError:
                raise _ProtocolError(1007, "a text message is not valid UTF-8") from None
        return {"type": "binary", "data": bytes(parts)}

    def _on_close(self, payload: bytes) -> WebSocketDisconnect:
        """The client's close: answered with the same code (§5.5.1) unless we closed first."""
        if len(payload) == 1:
            raise _ProtocolError(1002, "a close frame with a 1-byte payload")
        code = struct.unpack("!H", payload[:2])[0] if payload else 1005
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise _ProtocolError(1007, "a close reason is not valid UTF-8") from None
        if payload and (code < 1000 or code in (1004, 1005, 1006, 1015) or 1011 < code < 3000 or code > 4999):
            raise _ProtocolError(1002, f"close code {code} is not one a client may send")
        if not self._sent_close:
            self._send_close(code, "")
        self._finish()
        if self._closed is None:
            self._closed = WebSocketDisconnect(code, reason)
        return self._closed
