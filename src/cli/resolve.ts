// Resolves inference hostnames through Meridian's own DNS (an A query over UDP with dns-packet), so
// `meridian predict` reaches the ingress the DNS names — the same path a client's resolver would take.

import { randomInt } from "node:crypto";
import dgram from "node:dgram";
import packet from "dns-packet";
import { CliError } from "./api.ts";

export async function resolveA(name: string, server: string, timeoutMs = 2000): Promise<string[]> {
  const m = /^(.+):(\d+)$/.exec(server);
  if (!m) throw new CliError(`The DNS address must be IP:PORT, got '${server}'.`);
  const [host, port] = [m[1]!.replace(/^\[|\]$/g, ""), Number(m[2])];
  const id = randomInt(0, 65536);
  const query = packet.encode({
    type: "query",
    id,
    flags: packet.RECURSION_DESIRED,
    questions: [{ type: "A", name }],
  });
  const socket = dgram.createSocket(host.includes(":") ? "udp6" : "udp4");
  try {
    const answer = await new Promise<packet.Packet>((ok, fail) => {
      const timer = setTimeout(
        () => fail(new CliError(`No answer from Meridian's DNS at ${server} within ${timeoutMs} ms.`)),
        timeoutMs,
      );
      socket.on("message", (msg) => {
        const decoded = packet.decode(msg);
        if (decoded.id !== id) return;
        clearTimeout(timer);
        ok(decoded);
      });
      socket.on("error", (err) => {
        clearTimeout(timer);
        fail(new CliError(`DNS query to ${server} failed: ${err.message}`));
      });
      socket.send(query, port, host);
    });
    const rcode = (answer as { rcode?: string }).rcode;
    if (rcode === "NXDOMAIN") throw new CliError(`${name} does not exist (NXDOMAIN from Meridian's DNS).`);
    const addresses = (answer.answers ?? []).flatMap((a) => (a.type === "A" ? [a.data] : []));
    if (addresses.length === 0)
      throw new CliError(`Meridian's DNS has no address for ${name} (${rcode ?? "no data"}).`);
    return addresses;
  } finally {
    socket.close();
  }
}
