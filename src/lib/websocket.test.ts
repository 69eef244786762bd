// The relay's frame checks (RFC 6455 §5), byte by byte: what passes, where a fault stops the stream.
import { describe, expect, it } from "vitest";
import { acceptKey, closeFrame, encodeFrame, FrameReader, OPCODE, validKey } from "./websocket.ts";

const client = (max = 1024) => new FrameReader({ masked: true, maxPayload: max, extensions: false });
const server = (max = 1024) => new FrameReader({ masked: false, maxPayload: max, extensions: false });

describe("websocket handshake values", () => {
  it("computes RFC 6455 §1.3's example accept value", () => {
    expect(acceptKey("dGhlIHNhbXBsZSBub25jZQ==")).toBe("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  });
  it("takes only 16-byte base64 keys", () => {
    expect(validKey("dGhlIHNhbXBsZSBub25jZQ==")).toBe(true);
    expect(validKey("dGhlIHNhbXBsZQ==")).toBe(false);
    expect(validKey(undefined)).toBe(false);
    expect(validKey("not base64 at all!!!!!==")).toBe(false);
  });
});

describe("FrameReader", () => {
  it("passes whole frames and holds back an incomplete header, across any split", () => {
    const frames = Buffer.concat([
      encodeFrame(OPCODE.text, Buffer.from("hello"), true),
      encodeFrame(OPCODE.binary, Buffer.alloc(300, 7), true),
      encodeFrame(OPCODE.ping, Buffer.from("p"), true),
      closeFrame(1000, "bye", true),
    ]);
    for (let split = 1; split < frames.length; split++) {
      const r = client();
      const a = r.feed(frames.subarray(0, split));
      expect(a.fault).toBeNull();
      const carry = frames.subarray(a.pass, split);
      expect(carry.length).toBeLessThan(14);
      const b = r.feed(Buffer.concat([carry, frames.subarray(split)]));
      expect(b).toEqual({ pass: frames.length - a.pass, fault: null });
    }
  });

  it("refuses a frame over the limit before its payload, at the frame's first byte", () => {
    const ok = encodeFrame(OPCODE.text, Buffer.alloc(10), true);
    const big = encodeFrame(OPCODE.binary, Buffer.alloc(2000), true);
    const r = client(1024);
    const out = r.feed(Buffer.concat([ok, big]));
    expect(out.pass).toBe(ok.length);
    expect(out.fault?.code).toBe(1009);
    // A 64-bit length is read whole: 2^40 bytes declared is over any limit.
    const huge = Buffer.from([0x82, 0xff, 0, 0, 0x01, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
    expect(client().feed(huge).fault?.code).toBe(1009);
    expect(client().feed(Buffer.from([0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4])).fault?.code).toBe(
      1002,
    );
  });

  it.each([
    ["an unmasked client frame", client(), encodeFrame(OPCODE.text, Buffer.from("x"), false)],
    ["a masked server frame", server(), encodeFrame(OPCODE.text, Buffer.from("x"), true)],
    ["reserved bits", client(), Buffer.from([0xc1, 0x80, 1, 2, 3, 4])],
    ["a reserved data opcode", client(), Buffer.from([0x83, 0x80, 1, 2, 3, 4])],
    ["a reserved control opcode", client(), Buffer.from([0x8b, 0x80, 1, 2, 3, 4])],
    ["a fragmented control frame", client(), Buffer.from([0x09, 0x80, 1, 2, 3, 4])],
    ["a control frame over 125 bytes", client(), encodeFrame(OPCODE.ping, Buffer.alloc(126), true)],
    ["a continuation with no message", client(), encodeFrame(OPCODE.continuation, Buffer.from("x"), true)],
    ["HTTP bytes", client(), Buffer.from("POST /predict HTTP/1.1\r\nHost: x\r\n\r\n")],
  ])("refuses %s with 1002", (_name, reader, bytes) => {
    const out = reader.feed(bytes);
    expect(out.pass).toBe(0);
    expect(out.fault?.code).toBe(1002);
  });

  it("tracks fragmentation: continuation frames, interleaved control frames, no new message inside", () => {
    const r = client();
    const parts = Buffer.concat([
      encodeFrame(OPCODE.text, Buffer.from("a"), true, false),
      encodeFrame(OPCODE.ping, Buffer.alloc(0), true),
      encodeFrame(OPCODE.continuation, Buffer.from("b"), true, true),
    ]);
    expect(r.feed(parts)).toEqual({ pass: parts.length, fault: null });
    const bad = client();
    const two = Buffer.concat([
      encodeFrame(OPCODE.text, Buffer.from("a"), true, false),
      encodeFrame(OPCODE.text, Buffer.from("b"), true),
    ]);
    expect(bad.feed(two).fault?.code).toBe(1002);
  });
});
