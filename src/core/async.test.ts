// The async request rules of the inference reference, the retry schedule, request ids, the private-address
// rule for webhooks, and Baseten's signature (checked against an independent HMAC computation).
import { createHmac } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  checkAsyncPredictBody,
  isPrivateAddress,
  newAsyncRequestId,
  planeTag,
  requestIdTag,
  retryDelayMs,
  verifyWebhookSignature,
  webhookSignature,
} from "./async.ts";

describe("checkAsyncPredictBody", () => {
  it("applies the reference's defaults", () => {
    const c = checkAsyncPredictBody({ model_input: { a: 1 } });
    expect(c).toEqual({
      ok: true,
      request: {
        model_input: { a: 1 },
        webhook_endpoint: null,
        priority: 0,
        max_time_in_queue_seconds: 600,
        inference_retry_config: { max_attempts: 3, initial_delay_ms: 1000, max_delay_ms: 5000 },
      },
    });
  });

  const cases: Array<[string, unknown, string]> = [
    ["not an object", [1], ""],
    ["no model_input", { priority: 1 }, "model_input"],
    ["priority too high", { model_input: 1, priority: 3 }, "priority"],
    ["priority not an integer", { model_input: 1, priority: 0.5 }, "priority"],
    ["queue time too short", { model_input: 1, max_time_in_queue_seconds: 9 }, "max_time_in_queue_seconds"],
    [
      "queue time too long",
      { model_input: 1, max_time_in_queue_seconds: 259_201 },
      "max_time_in_queue_seconds",
    ],
    [
      "attempts 0",
      { model_input: 1, inference_retry_config: { max_attempts: 0 } },
      "inference_retry_config.max_attempts",
    ],
    [
      "attempts 11",
      { model_input: 1, inference_retry_config: { max_attempts: 11 } },
      "inference_retry_config.max_attempts",
    ],
    [
      "delay too long",
      { model_input: 1, inference_retry_config: { max_delay_ms: 60_001 } },
      "inference_retry_config.max_delay_ms",
    ],
    [
      "unknown retry field",
      { model_input: 1, inference_retry_config: { tries: 2 } },
      "inference_retry_config.tries",
    ],
    ["misspelt field", { model_input: 1, webhook_endpont: "https://x" }, "webhook_endpont"],
    ["webhook not a URL", { model_input: 1, webhook_endpoint: "hooks.example" }, "webhook_endpoint"],
    ["webhook ftp", { model_input: 1, webhook_endpoint: "ftp://hooks.example/x" }, "webhook_endpoint"],
    [
      "webhook credentials",
      { model_input: 1, webhook_endpoint: "https://u:p@hooks.example/" },
      "webhook_endpoint",
    ],
  ];
  for (const [name, body, field] of cases) {
    it(`refuses ${name}, naming ${field || "the body"}`, () => {
      const c = checkAsyncPredictBody(body);
      expect(c.ok).toBe(false);
      if (!c.ok) expect(c.field).toBe(field);
    });
  }

  it("takes the bounds themselves", () => {
    expect(checkAsyncPredictBody({ model_input: null, priority: 2, max_time_in_queue_seconds: 10 }).ok).toBe(
      true,
    );
    expect(checkAsyncPredictBody({ model_input: "s", max_time_in_queue_seconds: 259_200 }).ok).toBe(true);
  });
});

describe("retryDelayMs", () => {
  it("doubles from initial_delay_ms up to max_delay_ms", () => {
    const c = { max_attempts: 10, initial_delay_ms: 1000, max_delay_ms: 5000 };
    expect([2, 3, 4, 5, 6].map((a) => retryDelayMs(c, a))).toEqual([1000, 2000, 4000, 5000, 5000]);
  });
  it("keeps initial_delay_ms as the minimum when max_delay_ms is smaller", () => {
    expect(retryDelayMs({ max_attempts: 3, initial_delay_ms: 2000, max_delay_ms: 500 }, 3)).toBe(2000);
    expect(retryDelayMs({ max_attempts: 3, initial_delay_ms: 0, max_delay_ms: 0 }, 5)).toBe(0);
  });
});

describe("request ids", () => {
  it("are 32 hex digits that name their plane by tag", () => {
    const id = newAsyncRequestId("eu-1", new Uint8Array(12).fill(7));
    expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(requestIdTag(id)).toBe(planeTag("eu-1"));
    expect(planeTag("eu-1")).not.toBe(planeTag("eu-2"));
    expect(requestIdTag("../../etc")).toBeNull();
    expect(requestIdTag(id.toUpperCase())).toBeNull();
  });
});

describe("isPrivateAddress", () => {
  const yes = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "::1",
    "::",
    "fd00::1",
    "fe80::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
  ];
  const no = ["8.8.8.8", "172.32.0.1", "100.128.0.1", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"];
  for (const ip of yes) it(`${ip} is private`, () => expect(isPrivateAddress(ip)).toBe(true));
  for (const ip of no) it(`${ip} is public`, () => expect(isPrivateAddress(ip)).toBe(false));
});

describe("webhook signature", () => {
  it("is v1=HMAC-SHA256(body) per secret, newest first, as Baseten sends it", () => {
    const body = '{"request_id":"x"}';
    const hex = (s: string) => createHmac("sha256", s).update(body).digest("hex");
    expect(webhookSignature(["new", "old"], body)).toBe(`v1=${hex("new")},v1=${hex("old")}`);
    expect(webhookSignature([], body)).toBeNull();
  });

  it("verifies under any active secret, and never for another body or secret", () => {
    fc.assert(
      fc.property(fc.string(), fc.string({ minLength: 1 }), fc.string({ minLength: 1 }), (body, a, b) => {
        const header = webhookSignature([a], body)!;
        expect(verifyWebhookSignature(header, a, body)).toBe(true);
        if (a !== b) expect(verifyWebhookSignature(header, b, body)).toBe(false);
        expect(verifyWebhookSignature(header, a, `${body}x`)).toBe(false);
      }),
    );
    expect(verifyWebhookSignature("v1=zz", "s", "b")).toBe(false);
  });
});
