// What a predict() result becomes on the wire: JSON, bytes or a stream, and how stream chunks are encoded.

import { describe, expect, it } from "vitest";
import { chunkFormat, classifyPrediction, encodeChunk } from "./js-model.ts";

describe("classifyPrediction", () => {
  it.each([
    ["an object", { a: 1 }, '{"a":1}'],
    ["a string", "hi", '"hi"'],
    ["a number", 3, "3"],
    ["null", null, "null"],
    ["undefined", undefined, "null"],
    ["an array (iterable, but JSON)", [1, 2], "[1,2]"],
  ])("sends %s as JSON", (_name, value, body) => {
    expect(classifyPrediction(value)).toEqual({ kind: "json", body });
  });

  it("sends a Uint8Array as bytes", () => {
    expect(classifyPrediction(Buffer.from("ab"))).toMatchObject({ kind: "bytes" });
  });

  it("streams async generators, async iterables and sync generators", () => {
    async function* agen() {
      yield 1;
    }
    function* gen() {
      yield 1;
    }
    const iterable = { [Symbol.asyncIterator]: agen };
    expect(classifyPrediction(agen()).kind).toBe("stream");
    expect(classifyPrediction(iterable).kind).toBe("stream");
    expect(classifyPrediction(gen()).kind).toBe("stream");
  });

  it("throws for values without a JSON form", () => {
    expect(() => classifyPrediction(10n)).toThrow();
    expect(() => classifyPrediction(() => 1)).toThrow(/no JSON form/);
  });
});

describe("stream chunks", () => {
  it("takes the content type from the first chunk", () => {
    expect(chunkFormat("text")).toBe("text");
    expect(chunkFormat(new Uint8Array(1))).toBe("bytes");
    expect(chunkFormat({ token: "a" })).toBe("ndjson");
    expect(chunkFormat(7)).toBe("ndjson");
  });

  it("sends text and bytes verbatim and other values as JSON lines", () => {
    const text = (chunk: unknown) => Buffer.from(encodeChunk(chunk)).toString("utf8");
    expect(text("héllo")).toBe("héllo");
    expect([...encodeChunk(new Uint8Array([1, 2]))]).toEqual([1, 2]);
    expect(text({ token: "a" })).toBe('{"token":"a"}\n');
    expect(text(undefined)).toBe("null\n");
  });
});
