// The WebSocket protocol pieces Meridian needs (RFC 6455): the opening handshake's accept value, a
// streaming frame-header reader that checks framing without buffering payloads (the ingress relay), and a
// small message-level endpoint over a socket (the runtime's websocket handler). No I/O of its own beyond the
// socket it is given.

import { createHash, randomBytes } from "node:crypto";
import type { Duplex } from "node:stream";

/** RFC 6455 §1.3: the GUID the server appends to the client's key. */
const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2 step 5.4). */
export function acceptKey(key: string): string {
  return createHash("sha1")
    .update(key + GUID)
    .digest("base64");
}

/** A `Sec-WebSocket-Key`: 16 bytes, base64 (RFC 6455 §4.1 point 7). */
export function validKey(key: string | undefined): boolean {
  if (key === undefined || !/^[A-Za-z0-9+/]{22}==$/.test(key.trim())) return false;
  return Buffer.from(key.trim(), "base64").length === 16;
}

/** Close status codes used here (RFC 6455 §7.4.1). */
export const CLOSE = {
  normal: 1000,
  goingAway: 1001,
  protocolError: 1002,
  tooBig: 1009,
} as const;

export const OPCODE = { continuation: 0, text: 1, binary: 2, close: 8, ping: 9, pong: 10 } as const;

/** Why a frame stream was refused. */
export type FrameFault = { code: number; reason: string };

/**
 * Reads frame headers as bytes pass (RFC 6455 §5.2), never holding a payload. `feed(data)` says how many
 * bytes from the start of `data` belong to frames that passed the checks; bytes after that are either an
 * incomplete header (at most 13 bytes: the caller keeps them and feeds them again in front of the next
 * chunk) or the start of the frame that failed (`fault`).
 * - `masked`: frames from a client must be masked, frames from a server must not be (§5.1);
 * - `maxPayload`: a frame's declared payload length above it is refused (1009) before its payload passes;
 * - `extensions`: RSV bits are allowed only when an extension was negotiated (§5.2);
 * - opcodes outside §5.2's table, fragmented or long control frames, continuations out of place and 64-bit
 *   lengths with the high bit set are protocol errors (1002).
 */
export class FrameReader {
  readonly #masked: boolean;
  readonly #maxPayload: number;
  readonly #extensions: boolean;
  /** Payload bytes of the current frame still to pass. */
  #remaining = 0;
  /** Inside a fragmented data message (a continuation is due). */
  #fragmented = false;
  /** The opcode of the last frame whose header passed. */
  lastOpcode = -1;

  constructor(options: { masked: boolean; maxPayload: number; extensions: boolean }) {
    this.#masked = options.masked;
    this.#maxPayload = options.maxPayload;
    this.#extensions = options.extensions;
  }

  feed(data: Uint8Array): { pass: number; fault: FrameFault | null } {
    let i = 0;
    while (i < data.length) {
      if (this.#remaining > 0) {
        const n = Math.min(this.#remaining, data.length - i);
        this.#remaining -= n;
        i += n;
        continue;
      }
      if (data.length - i < 2) break;
      const len7 = data[i + 1]! & 0x7f;
      const size = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (data[i + 1]! & 0x80 ? 4 : 0);
      if (data.length - i < size) break;
      const fault = this.#check(data, i);
      if (fault !== null) return { pass: i, fault };
      i += size;
    }
    return { pass: i, fault: null };
  }

  #check(d: Uint8Array, at: number): FrameFault | null {
    const b0 = d[at]!;
    const b1 = d[at + 1]!;
    const fin = (b0 & 0x80) !== 0;
    const opcode = b0 & 0x0f;
    const masked = (b1 & 0x80) !== 0;
    const len7 = b1 & 0x7f;
    if ((b0 & 0x70) !== 0 && !this.#extensions) {
      return { code: CLOSE.protocolError, reason: "reserved bits set" };
    }
    if (masked !== this.#masked) {
      return {
        code: CLOSE.protocolError,
        reason: this.#masked ? "unmasked client frame" : "masked server frame",
      };
    }
    let length: number;
    if (len7 === 126) length = (d[at + 2]! << 8) | d[at + 3]!;
    else if (len7 === 127) {
      const high = ((d[at + 2]! << 24) >>> 0) + (d[at + 3]! << 16) + (d[at + 4]! << 8) + d[at + 5]!;
      if (high >= 0x80000000) {
        return { code: CLOSE.protocolError, reason: "64-bit length with the high bit set" };
      }
      const low = ((d[at + 6]! << 24) >>> 0) + (d[at + 7]! << 16) + (d[at + 8]! << 8) + d[at + 9]!;
      length = high * 2 ** 32 + low;
    } else length = len7;
    if (opcode >= OPCODE.close) {
      if (opcode > OPCODE.pong) return { code: CLOSE.protocolError, reason: `reserved opcode ${opcode}` };
      if (!fin || length > 125) return { code: CLOSE.protocolError, reason: "bad control frame" };
    } else {
      if (opcode > OPCODE.binary) return { code: CLOSE.protocolError, reason: `reserved opcode ${opcode}` };
      if (opcode === OPCODE.continuation && !this.#fragmented) {
        return { code: CLOSE.protocolError, reason: "continuation without a message" };
      }
      if (opcode !== OPCODE.continuation && this.#fragmented) {
        return { code: CLOSE.protocolError, reason: "new message inside a fragmented one" };
      }
      this.#fragmented = !fin;
    }
    if (length > this.#maxPayload) {
      return { code: CLOSE.tooBig, reason: `frame of ${length} bytes over the limit of ${this.#maxPayload}` };
    }
    this.lastOpcode = opcode;
    this.#remaining = length;
    return null;
  }
}

/** One frame, masked when `mask` (a client's frames), as one buffer. */
export function encodeFrame(opcode: number, payload: Uint8Array, mask: boolean, fin = true): Buffer {
  const n = payload.length;
  const ext = n < 126 ? 0 : n < 65_536 ? 2 : 8;
  const out = Buffer.allocUnsafe(2 + ext + (mask ? 4 : 0) + n);
  out[0] = (fin ? 0x80 : 0) | opcode;
  out[1] = (mask ? 0x80 : 0) | (ext === 0 ? n : ext === 2 ? 126 : 127);
  let at = 2;
  if (ext === 2) at = out.writeUInt16BE(n, at);
  else if (ext === 8) {
    out.writeUInt32BE(Math.floor(n / 2 ** 32), at);
    out.writeUInt32BE(n >>> 0, at + 4);
    at += 8;
  }
  if (!mask) {
    out.set(payload, at);
    return out;
  }
  const key = randomBytes(4);
  out.set(key, at);
  at += 4;
  for (let i = 0; i < n; i++) out[at + i] = payload[i]! ^ key[i & 3]!;
  return out;
}

/** A close frame with a status code and a short reason (§5.5.1: at most 123 bytes of reason). */
export function closeFrame(code: number, reason: string, mask: boolean): Buffer {
  const text = Buffer.from(reason, "utf8").subarray(0, 123);
  const payload = Buffer.allocUnsafe(2 + text.length);
  payload.writeUInt16BE(code, 0);
  text.copy(payload, 2);
  return encodeFrame(OPCODE.close, payload, mask);
}

export type WebSocketMessage = { type: "text"; data: string } | { type: "binary"; data: Buffer };

/**
 * The server end of an upgraded connection, message by message: what a model's `websocket()` handler is
 * given. Pings are answered; a close is answered and ends the socket; fragmented messages are reassembled
 * up to `maxMessageBytes` (1009 beyond). Frames must be masked (they come from a client).
 */
export class WebSocketEndpoint {
  readonly #socket: Duplex;
  readonly #maxMessageBytes: number;
  readonly #listeners: { message: ((m: WebSocketMessage) => void)[]; close: ((code: number) => void)[] } = {
    message: [],
    close: [],
  };
  #buffer: Buffer = Buffer.alloc(0);
  #parts: Buffer[] = [];
  #partsBytes = 0;
  #partsType: "text" | "binary" = "text";
  #closed = false;
  #closeSent = false;

  constructor(socket: Duplex, head: Buffer, maxMessageBytes: number) {
    this.#socket = socket;
    this.#maxMessageBytes = maxMessageBytes;
    socket.on("data", (chunk: Buffer) => this.#onData(chunk));
    socket.on("close", () => this.#finish(CLOSE.goingAway));
    socket.on("error", () => this.#finish(CLOSE.goingAway));
    socket.on("end", () => socket.end());
    if (head.length > 0) queueMicrotask(() => this.#onData(head));
  }

  on(event: "message", listener: (m: WebSocketMessage) => void): this;
  on(event: "close", listener: (code: number) => void): this;
  on(event: "message" | "close", listener: ((m: WebSocketMessage) => void) | ((code: number) => void)): this {
    (this.#listeners[event] as unknown[]).push(listener);
    return this;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Sends a text (string) or binary message as one frame. */
  send(data: string | Uint8Array): void {
    if (this.#closeSent || this.#socket.destroyed) return;
    const payload = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    this.#socket.write(encodeFrame(typeof data === "string" ? OPCODE.text : OPCODE.binary, payload, false));
  }

  /** Starts the closing handshake (§7.1.2); the socket ends once the peer answers, or in 5 s. */
  close(code: number = CLOSE.normal, reason = ""): void {
    if (this.#closeSent || this.#socket.destroyed) return;
    this.#closeSent = true;
    this.#socket.write(closeFrame(code, reason, false));
    setTimeout(() => this.#socket.destroy(), 5_000).unref();
  }

  #onData(chunk: Buffer): void {
    this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk]);
    for (;;) {
      const frame = readFrame(this.#buffer, this.#maxMessageBytes);
      if (frame === null) return;
      if ("fault" in frame) {
        this.close(frame.fault.code, frame.fault.reason);
        this.#buffer = Buffer.alloc(0);
        return;
      }
      this.#buffer = this.#buffer.subarray(frame.size);
      this.#onFrame(frame.fin, frame.opcode, frame.payload);
      if (this.#closed) return;
    }
  }

  #onFrame(fin: boolean, opcode: number, payload: Buffer): void {
    switch (opcode) {
      case OPCODE.ping:
        if (!this.#closeSent) this.#socket.write(encodeFrame(OPCODE.pong, payload, false));
        return;
      case OPCODE.pong:
        return;
      case OPCODE.close: {
        const code = payload.length >= 2 ? payload.readUInt16BE(0) : CLOSE.normal;
        if (!this.#closeSent) {
          this.#closeSent = true;
          this.#socket.write(closeFrame(code, "", false));
        }
        this.#socket.end();
        this.#finish(code);
        return;
      }
    }
    if (opcode !== OPCODE.continuation) this.#partsType = opcode === OPCODE.text ? "text" : "binary";
    this.#parts.push(payload);
    this.#partsBytes += payload.length;
    if (this.#partsBytes > this.#maxMessageBytes) {
      this.close(CLOSE.tooBig, "message too big");
      return;
    }
    if (!fin) return;
    const data = this.#parts.length === 1 ? this.#parts[0]! : Buffer.concat(this.#parts);
    this.#parts = [];
    this.#partsBytes = 0;
    const message: WebSocketMessage =
      this.#partsType === "text" ? { type: "text", data: data.toString("utf8") } : { type: "binary", data };
    for (const l of this.#listeners.message) l(message);
  }

  #finish(code: number): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const l of this.#listeners.close) l(code);
  }
}

/** One whole masked frame at the start of `buf`, its unmasked payload; null when more bytes are needed. */
function readFrame(
  buf: Buffer,
  maxPayload: number,
): { fin: boolean; opcode: number; payload: Buffer; size: number } | { fault: FrameFault } | null {
  if (buf.length < 2) return null;
  const fin = (buf[0]! & 0x80) !== 0;
  const opcode = buf[0]! & 0x0f;
  const len7 = buf[1]! & 0x7f;
  if (buf[0]! & 0x70) return { fault: { code: CLOSE.protocolError, reason: "reserved bits set" } };
  if (!(buf[1]! & 0x80)) return { fault: { code: CLOSE.protocolError, reason: "unmasked client frame" } };
  if ((opcode > OPCODE.binary && opcode < OPCODE.close) || opcode > OPCODE.pong) {
    return { fault: { code: CLOSE.protocolError, reason: `reserved opcode ${opcode}` } };
  }
  if (opcode >= OPCODE.close && (!fin || len7 > 125)) {
    return { fault: { code: CLOSE.protocolError, reason: "bad control frame" } };
  }
  const ext = len7 === 126 ? 2 : len7 === 127 ? 8 : 0;
  const headerSize = 2 + ext + 4;
  if (buf.length < headerSize) return null;
  const length = len7 === 126 ? buf.readUInt16BE(2) : len7 === 127 ? Number(buf.readBigUInt64BE(2)) : len7;
  if (!Number.isSafeInteger(length) || length > maxPayload) {
    return { fault: { code: CLOSE.tooBig, reason: "message too big" } };
  }
  if (buf.length < headerSize + length) return null;
  const key = buf.subarray(2 + ext, headerSize);
  const payload = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) payload[i] = buf[headerSize + i]! ^ key[i & 3]!;
  return { fin, opcode, payload, size: headerSize + length };
}
