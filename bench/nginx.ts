// nginx as the baseline a user would otherwise put in front of model servers: the Debian package, one
// worker, `proxy_pass` to an upstream block with keep-alive, routing by `server_name`, access log buffered
// like Meridian's audit log. The configuration is generated into a temp dir and nginx runs as a
// non-daemon child with its own pid, error log and temp paths.

import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Child, sleep, startChild, tempDir } from "./lib.ts";

export const NGINX = "/usr/sbin/nginx";

/** `nginx -v` prints to stderr. */
export function nginxVersion(): string {
  const r = spawnSync(NGINX, ["-v"], { encoding: "utf8" });
  return `${r.stdout ?? ""}${r.stderr ?? ""}`.trim() || "nginx (version unknown)";
}

export interface NginxRoute {
  serverName: string;
  upstream: string;
  /** Path on the upstream that `/predict` maps to. */
  upstreamPath: string;
}

export interface RunningNginx {
  child: Child;
  port: number;
  /** pid of the single worker (its CPU is what serves requests). */
  workerPid: number;
  stop(): Promise<void>;
}

export async function startNginx(port: number, routes: NginxRoute[]): Promise<RunningNginx> {
  const dir = tempDir("meridian-nginx-");
  for (const sub of ["client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"]) mkdirSync(join(dir, sub));
  const servers = routes.map(
    (r, i) => `
  upstream replica${i} {
    server ${r.upstream};
    keepalive 128;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:${port};
    server_name ${r.serverName};
    location = /predict {
      proxy_pass http://replica${i}${r.upstreamPath};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
  }`,
  );
  const conf = `
worker_processes 1;
daemon off;
master_process on;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log warn;
user root;
events { worker_connections 4096; }
http {
  access_log ${dir}/logs/access.log combined buffer=64k flush=100ms;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  client_max_body_size 100m;
  client_body_buffer_size 2m;
  keepalive_requests 1000000;
  keepalive_timeout 65s;
  server {
    listen 127.0.0.1:${port} default_server;
    return 404;
  }
${servers.join("\n")}
}
`;
  const file = join(dir, "nginx.conf");
  writeFileSync(file, conf);
  const child = startChild("nginx", NGINX, ["-p", dir, "-c", file, "-e", join(dir, "logs/error.log")]);
  let workerPid = 0;
  for (let i = 0; i < 100 && workerPid === 0; i++) {
    await sleep(50);
    try {
      const kids = readFileSync(`/proc/${child.proc.pid}/task/${child.proc.pid}/children`, "utf8").trim();
      workerPid = Number(kids.split(/\s+/)[0] ?? 0);
    } catch {}
  }
  if (workerPid === 0) throw new Error(`nginx did not start:\n${child.output.join("\n")}`);
  return { child, port, workerPid, stop: () => child.stop() };
}
