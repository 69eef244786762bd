// The minimal upstream of the gateway benchmark: a bare node:http server that reads the request body and
// answers a small JSON document. It stands for "the cheapest possible model server", so what a proxy in
// front of it adds is measured rather than the model's own work. Run as its own process.

import http from "node:http";
import type { AddressInfo } from "node:net";

const host = process.env["BENCH_HOST"] ?? "127.0.0.1";
const port = Number(process.env["BENCH_PORT"] ?? 0);

const server = http.createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
  let bytes = 0;
  req.on("data", (c: Buffer) => {
    bytes += c.length;
  });
  req.on("end", () => {
    const body = `{"ok":true,"bytes":${bytes}}`;
    res.writeHead(200, ["content-type", "application/json", "content-length", String(body.length)]);
    res.end(body);
  });
});
server.listen(port, host, () => {
  process.stdout.write(`listening ${(server.address() as AddressInfo).port}\n`);
});
process.on("SIGTERM", () => {
  server.close();
  server.closeAllConnections();
});
