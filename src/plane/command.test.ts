// The plane's websocket flags: parsed once, refused with a message naming the flag.
import { describe, expect, it } from "vitest";
import { parseWebSocketLimits } from "./command.ts";

describe("--websocket-max-frame and --websocket-idle-timeout", () => {
  it("map to the ingress limits; absent flags keep the defaults", () => {
    expect(parseWebSocketLimits({})).toEqual({});
    expect(parseWebSocketLimits({ websocketMaxFrame: "65536", websocketIdleTimeout: "30" })).toEqual({
      websocketMaxFrameBytes: 65_536,
      websocketIdleTimeoutMs: 30_000,
    });
  });

  it.each([
    [{ websocketMaxFrame: "0" }, /--websocket-max-frame/],
    [{ websocketMaxFrame: "1e3" }, /--websocket-max-frame/],
    [{ websocketMaxFrame: "2000000000" }, /--websocket-max-frame/],
    [{ websocketIdleTimeout: "0" }, /--websocket-idle-timeout/],
    [{ websocketIdleTimeout: "1.5" }, /--websocket-idle-timeout/],
    [{ websocketIdleTimeout: "-3" }, /--websocket-idle-timeout/],
  ])("refuses %o", (flags, message) => {
    expect(() => parseWebSocketLimits(flags)).toThrow(message);
  });
});
