// The ingress suite (ingress.test.ts) on the node:http + undici transport, the fallback when Node's parser
// is not usable by the wire transport.
(globalThis as { ingressTransportUnderTest?: string }).ingressTransportUnderTest = "http";
await import("./ingress.test.ts");
