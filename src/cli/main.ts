// The `meridian` command: parses the command line and hands each command's typed options to its role.
// Roles are loaded lazily so `meridian predict` does not pay for the control plane's imports.
import { Command } from "commander";
import { registerUserCommands } from "./commands.ts";

const program = new Command("meridian")
  .description("Self-hosted model serving with regional environments")
  .showHelpAfterError()
  .configureOutput({ outputError: (text, write) => write(text) });

// @commands: each role registers its commands below this line.

program
  .command("plane")
  .description("Run a workload plane: replicas through the process driver, and its ingress gateway")
  .requiredOption("--name <name>", "the plane's name, as registered with `meridian admin planes add`")
  .requiredOption("--region <slug>", "the region it was registered in")
  .requiredOption("--control-url <url>", "control plane base URL")
  .option("--token-file <file>", "file holding the plane's credential (or MERIDIAN_PLANE_TOKEN)")
  .option(
    "--data-dir <dir>",
    "state directory (snapshot cache, audit log, packages, replica logs)",
    ".meridian/plane",
  )
  .option("--ingress <host:port>", "address of the inference ingress", "127.0.0.1:8080")
  .option(
    "--admin <host:port>",
    "operator listener: /metrics, /healthz, audit records and exports, evidence pieces, replica logs",
  )
  .option(
    "--tls-cert <file>",
    "serve HTTPS with this certificate: the plane's own (its addresses), or one for every name it serves",
  )
  .option("--tls-key <file>", "the certificate's private key")
  .option(
    "--tls-dir <dir>",
    "certificates by hostname ({hostname}.pem + {hostname}.key.pem), served by SNI and reloaded on change; needs --tls-cert",
  )
  .option("--peer-ca <file>", "CA of the other planes' ingress certificates: plane-to-plane hops use HTTPS")
  .option("--predict-timeout <seconds>", "how long a model may take to answer (default 1200)")
  .option(
    "--hop-continue-timeout <ms>",
    "how long a plane-to-plane hop waits for the peer ingress's 100 Continue before it is taken as frozen, 0-60000 ms; 0 turns the wait off (default 2000)",
  )
  .option(
    "--websocket-max-frame <bytes>",
    "largest websocket frame payload relayed either way; a larger one closes both sides with 1009 (default 16777216)",
  )
  .option(
    "--websocket-idle-timeout <seconds>",
    "a websocket with no byte either way for this long is closed on both sides with 1001 (default 300)",
  )
  .option(
    "--park-queue <n>",
    "requests the ingress holds per deployment while it wakes or its replicas are full, 1-100000 (default 64); beyond it 429",
  )
  .option("--retry-after <seconds>", "the Retry-After of a backpressure 429, 1-3600 (default 1)")
  .option(
    "--ingress-transport <wire|http>",
    "the ingress's HTTP implementation: wire (Node's llhttp on node:net, default) or http (node:http + undici)",
  )
  .option(
    "--sandbox <bwrap|none>",
    "how replicas run: bwrap (a bubblewrap sandbox, default; the plane refuses replicas when it fails its self-test) or none (plain child processes, logged as a warning)",
  )
  .option(
    "--sandbox-uid <uid[:gid]>",
    "host uid (and gid) of sandboxed replicas when the plane runs as root (default 65534)",
  )
  .option("--sandbox-bwrap <path>", "the bwrap executable (default /usr/bin/bwrap)")
  .option(
    "--python <path>",
    "a Python interpreter for truss packages, preferred over those found in /usr/local/bin and /usr/bin (repeatable)",
    (value: string, previous: string[] = []) => [...previous, value],
  )
  .option(
    "--pip-find-links <dir>",
    "install truss requirements from this directory of wheels only (pip --no-index --find-links)",
  )
  .option("--pip-index-url <url>", "install truss requirements from this package index (pip --index-url)")
  .option(
    "--audit-retention <duration>",
    "how long audit records are kept: 30d (default), 12h, 90m; at least 1h",
  )
  .option(
    "--receipts <on|off>",
    "sign a receipt (RFC 9421) on every inference response with the plane's key: on (default) or off",
  )
  .option(
    "--receipt-body-limit <bytes>",
    "answers of known length up to this are held whole so the receipt covers their body (default 1048576; 0: heads only)",
  )
  .option("--async-concurrency <n>", "async requests each replica runs at once (default 1)")
  .option("--webhook-allow-http", "let async webhooks use http:// (development; https only by default)")
  .option(
    "--webhook-allow-private",
    "let async webhooks reach loopback, private and link-local addresses (development; refused by default)",
  )
  .option("--webhook-ca <file>", "extra CA certificates to trust for https webhooks")
  .action(async (flags) => {
    const { runPlaneCommand } = await import("../plane/command.ts");
    await runPlaneCommand(flags, process.env);
  });

program
  .command("control")
  .description("Run the control plane: management API, store, scheduler, plane snapshots")
  .option("--data-dir <dir>", "state directory (SQLite file, artifacts, admin.key)", ".meridian/control")
  .option("--listen <host:port>", "address of the management API", "127.0.0.1:8700")
  .option("--database-url <url>", "PostgreSQL URL instead of SQLite (or MERIDIAN_DATABASE_URL)")
  .option("--domain <domain>", "inference domain: endpoints are model-{id}.{domain}", "meridian.internal")
  .option("--public-url <url>", "URL clients reach this control plane at (default: the listen address)")
  .option(
    "--artifact-store <kind>",
    "where model packages are kept: files (under --data-dir) or database (shared by control replicas); default files with SQLite, database with PostgreSQL",
  )
  .option(
    "--plane-timeout <seconds>",
    "a plane silent this long is down; its replicas are placed again in their region (default 15)",
  )
  .option(
    "--autoscaler-interval-ms <ms>",
    "how often the autoscaler decides every deployment's replica count, 100-60000 (default 1000)",
  )
  .option(
    "--secrets-key-file <path>",
    "the key file that encrypts team secrets (mode 0600; default secrets.key under --data-dir, created on first start); every control replica needs the same file",
  )
  .action(async (flags) => {
    const { runControlCommand } = await import("../control/command.ts");
    await runControlCommand(flags, process.env);
  });

program
  .command("dns")
  .description("Authoritative DNS for the inference domain (UDP and TCP), following the control plane")
  .requiredOption("--listen <ip:port>", "address for UDP and TCP, e.g. 127.0.0.1:5353 (port 0: a free one)")
  .requiredOption("--domain <domain>", "the inference domain, e.g. meridian.localhost")
  .option("--control-url <url>", "control plane base URL; long-polls /v1/internal/dns/snapshot")
  .option("--token-file <file>", "file holding the bearer token for the control plane")
  .option("--data-dir <dir>", "directory for the snapshot cache (serves it after a restart)")
  .option("--ttl <seconds>", "TTL of answers (default 5)")
  .option("--snapshot-file <file>", "serve a static DNS snapshot (JSON) instead of following a control plane")
  .option("--ns-name <host>", "this server's host name for SOA and NS (default ns.DOMAIN)")
  .option("--ns-address <ips>", "comma-separated addresses of the NS host (default: the --listen IP)")
  .action(async (flags) => {
    const { runDnsCommand } = await import("../dns/command.ts");
    process.exit(await runDnsCommand(flags));
  });

program
  .command("serve-model")
  .description("Serve one model package on truss's paths (what a replica runs)")
  .argument("<dir>", "model package directory (config.yaml and model/model.js or docker_server)")
  .requiredOption("--listen <host:port>", "address to listen on; port 0 picks a free one")
  .option("--model-id <id>", "model id (default: $MERIDIAN_MODEL_ID)")
  .option("--deployment-id <id>", "deployment id (default: $MERIDIAN_DEPLOYMENT_ID)")
  .option("--environment <name>", "environment served (default: $MERIDIAN_ENVIRONMENT)")
  .option("--server-port <port>", "port for a custom server, exported to it as PORT (0: a free one)")
  .option("--max-queued <n>", "predict requests that may wait for a slot before 429 (default 64)")
  .action(async (dir: string, flags) => {
    const { runServeModel } = await import("../runtime/command.ts");
    process.exit(await runServeModel(dir, flags, process.env));
  });

program
  .command("up")
  .description(
    "Start the embedded installation: control plane, four regions with a plane each, DNS, local CA",
  )
  .option("--data-dir <dir>", "state directory (survives restarts)", ".meridian")
  .option("--domain <domain>", "inference domain", "meridian.internal")
  .option("--control-port <port>", "control plane port on 127.0.0.1", "8700")
  .option("--https-port <port>", "ingress port on each plane's address (127.0.N.1)", "8443")
  .option("--admin-port <port>", "planes' operator listener port (metrics, health)", "9464")
  .option("--dns <ip:port>", "DNS responder address", "127.0.0.1:8053")
  .option(
    "--example <name>",
    "the example pushed into prod-eu on first start: hello-js, hello-py, stream-js or stream-py",
    "hello-js",
  )
  .option("--no-example", "do not push the example model on first start")
  .action(async (flags) => {
    const { runUpCommand } = await import("../up/command.ts");
    await runUpCommand(flags);
  });

program
  .command("verify")
  .description(
    "Check offline against a key directory: a saved response's receipt, evidence, or an audit chain",
  )
  .argument("[response]", "a saved response: `curl -i` or `curl -D` output (- for stdin)")
  .requiredOption("--keys <file>", "the key directory (JSON) the control plane publishes")
  .option("--url <url>", "the URL the request was sent to: its authority and path must be the receipt's")
  .option("--method <method>", "the request's method")
  .option("--data <string>", "the request body, to check its digest")
  .option("--body-file <file>", "the request body, from a file")
  .option("--body-digest <value>", "the request body's Content-Digest (RFC 9530, sha-256)")
  .option("--evidence <file>", "check an evidence document instead")
  .option("--audit <dir>", "check a plane's audit directory instead")
  .option("--audit-export <file>", "check an audit export instead")
  .option("--json", "print the result as one JSON document")
  .action(async (response: string | undefined, flags) => {
    const { runVerifyCommand } = await import("./verify.ts");
    process.exitCode = await runVerifyCommand(response, flags);
  });

registerUserCommands(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`meridian: ${message}\n`);
  process.exitCode = 1;
});
