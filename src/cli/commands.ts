// The user and operator commands of the CLI: each parses its flags, calls the management API (or the
// inference endpoints), and prints either a few readable lines or, with --json, one JSON document.
// Failures print one line on stderr and exit non-zero.

import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { isIP } from "node:net";
import { join } from "node:path";
import type { Command } from "commander";
import { request } from "undici";
import { parseKeyDirectory } from "../core/key-directory.ts";
import { checkEnvironmentName } from "../core/names.ts";
import { isCertificateHostname } from "../core/tls-plan.ts";
import { CliError, ManagementApi } from "./api.ts";
import { predict, type Target } from "./predict.ts";
import { push } from "./push.ts";
import { resolveSettings, type Settings, saveProfile } from "./settings.ts";

interface Common {
  apiUrl?: string;
  apiKey?: string;
  dataDir?: string;
  json?: boolean;
}

function withCommon(cmd: Command): Command {
  return cmd
    .option(
      "--api-url <url>",
      "control plane URL (default: MERIDIAN_API_URL, the saved profile, or ./.meridian/up.json)",
    )
    .option("--api-key <key>", "API key (default: MERIDIAN_API_KEY or the saved profile)")
    .option(
      "--data-dir <dir>",
      "data directory of a local `meridian up` to read up.json from (default: MERIDIAN_DATA_DIR or ./.meridian)",
    )
    .option("--json", "print one JSON document instead of text");
}

/** Runs a command body: JSON or text out, CliError → one line and exit 1. */
function action<F extends Common>(
  body: (flags: F, settings: Settings, out: Output, args: string[]) => Promise<unknown>,
) {
  // Commander calls an action with the positional arguments, then the options, then the command.
  return async (...args: unknown[]) => {
    const cmd = args[args.length - 1] as Command;
    const flags = cmd.opts<F>();
    const positional = args.slice(0, -2) as string[];
    const out = new Output(Boolean(flags.json));
    try {
      const result = await body(flags, resolveSettings(flags, process.env), out, positional);
      if (flags.json && result !== undefined) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      process.stderr.write(`meridian: ${message}\n`);
      process.exitCode = err instanceof CliError ? err.exitCode : 1;
    }
  };
}

/** The parts of the API's answers that the text output reads. */
interface EnvironmentView {
  name: string;
  current_deployment: { id: string; status: string } | null;
  region_restriction: { region: string } | null;
  in_progress_promotion: { status: string } | null;
  autoscaling_settings: { min_replica: number; max_replica: number };
}
interface DeploymentView {
  id: string;
  status: string;
  region: { slug: string } | null;
}
/** The parts of a promotion dry run's answer (PromotionDryRunV1) that the text output reads. */
interface PromotionDryRunView {
  outcome: "promote" | "already_current" | "refused";
  message: string;
  candidate: { status_message: string | null } | null;
  in_flight_promotion: {
    id: string;
    status: string;
    source_deployment_id: string;
    candidate_deployment_id: string;
  } | null;
}
interface PlaneView {
  name: string;
  ingress: string[];
  replicas: Record<string, number>;
  sandbox: { mode: string; detail: string | null } | null;
  [field: string]: unknown;
}

class Output {
  constructor(readonly json: boolean) {}
  line(text = ""): void {
    if (!this.json) process.stdout.write(`${text}\n`);
  }
  note(text: string): void {
    process.stderr.write(`${text}\n`);
  }
  table(rows: Array<Record<string, unknown>>, columns: string[]): void {
    if (this.json) return;
    const cells = rows.map((r) => columns.map((c) => String(r[c] ?? "-")));
    const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((row) => row[i]!.length)));
    const fmt = (row: string[]) =>
      row
        .map((v, i) => v.padEnd(widths[i]!))
        .join("  ")
        .trimEnd();
    this.line(fmt(columns.map((c) => c.toUpperCase())));
    for (const row of cells) this.line(fmt(row));
  }
}

/** The inference domain: from the settings, else asked of the control plane. */
async function domainOf(settings: Settings): Promise<string> {
  if (settings.domain) return settings.domain;
  return (await new ManagementApi(settings).get<{ domain: string }>("/v1/info")).domain;
}

function envName(value: string): string {
  const check = checkEnvironmentName(value);
  if (!check.ok) throw new CliError(`'${value}' is not a valid environment name: ${check.message}`);
  return value;
}

function int(flag: string) {
  return (value: string) => {
    if (!/^\d+$/.test(value)) throw new CliError(`${flag} takes a whole number, got '${value}'`);
    return Number(value);
  };
}

export function registerUserCommands(program: Command): void {
  withCommon(
    program
      .command("login")
      .description("Save the control plane URL and API key (and DNS, CA) as your profile")
      .option("--dns <ip:port>", "Meridian's DNS, for `meridian predict`")
      .option("--ca <file>", "CA certificate of the ingresses"),
  ).action(
    action<Common & { dns?: string; ca?: string }>(async (_flags, settings, out) => {
      const api = new ManagementApi(settings);
      await api.get("/v1/regions");
      const path = saveProfile(process.env, {
        api_url: api.url,
        api_key: settings.apiKey!,
        dns: settings.dns,
        ca_file: settings.caFile,
      });
      out.line(`Logged in to ${api.url}; profile saved to ${path}.`);
      return { api_url: api.url, profile: path };
    }),
  );

  withCommon(
    program
      .command("push")
      .description("Upload a model package and create a deployment (optionally into an environment)")
      .argument("[dir]", "model package directory", ".")
      .option("-e, --environment <env>", "push straight into this environment (created if missing)")
      .option("--promote", "push into production")
      .option("--deployment-name <name>", "name of the new deployment")
      .option(
        "--model-name <name>",
        "model name (default: config.yaml's model_name, else the directory name)",
      )
      .option("--wait", "follow the deployment to ACTIVE, or to its failure with its log lines")
      .option("--timeout <seconds>", "how long --wait waits", int("--timeout"), 600),
  ).action(
    action<
      Common & {
        environment?: string;
        promote?: boolean;
        deploymentName?: string;
        modelName?: string;
        wait?: boolean;
        timeout: number;
      }
    >(async (flags, settings, out, [dir = "."]) => {
      if (flags.environment && flags.promote)
        throw new CliError("--environment and --promote exclude each other.");
      const api = new ManagementApi(settings);
      const domain = await domainOf(settings);
      const port = settings.ingressPort ?? 443;
      const result = await push(api, domain, {
        dir,
        environment: flags.environment ? envName(flags.environment) : null,
        promote: Boolean(flags.promote),
        deploymentName: flags.deploymentName ?? null,
        modelName: flags.modelName ?? null,
        wait: Boolean(flags.wait),
        waitTimeoutSeconds: flags.timeout,
        progress: !flags.json && process.stderr.isTTY === true,
        log: (l) => (flags.json ? undefined : out.line(l)),
      });
      const e = { ...result.endpoints };
      if (port !== 443) {
        for (const k of ["standard", "regional", "deployment"] as const) {
          if (e[k]) e[k] = e[k]!.replace(/^(https:\/\/[^/]+)/, `$1:${port}`);
        }
      }
      out.line(
        `Deployment ${result.deployment.id} (${result.deployment.name}) of model ${result.model.id}: ${result.deployment.status}`,
      );
      if (result.environment)
        out.line(
          `Environment: ${result.environment}${e.region ? ` (restricted to region ${e.region})` : ""}`,
        );
      if (e.regional) out.line(`Regional endpoint (stays in ${e.region}): POST ${e.regional}`);
      out.line(`Standard endpoint${e.regional ? " (no regional guarantee)" : ""}: POST ${e.standard}`);
      out.line(`This deployment: POST ${e.deployment}`);
      if (!flags.wait)
        out.line(`Follow it: meridian deployments list --model ${result.model.id}   (or push with --wait)`);
      return { ...result, endpoints: e };
    }),
  );

  withCommon(program.command("models").description("List models")).action(
    action<Common>(async (_flags, settings, out) => {
      const res = await new ManagementApi(settings).get<{ models: Array<Record<string, unknown>> }>(
        "/v1/models",
      );
      out.table(res.models, ["id", "name", "production_deployment_id", "deployments_count", "team_name"]);
      return res;
    }),
  );

  const deployments = program.command("deployments").description("Deployments of a model");
  withCommon(deployments.command("list").requiredOption("--model <id>", "model id")).action(
    action<Common & { model: string }>(async (flags, settings, out) => {
      const res = await new ManagementApi(settings).get<{ deployments: Array<Record<string, unknown>> }>(
        `/v1/models/${flags.model}/deployments`,
      );
      out.table(
        res.deployments.map((d) => ({
          ...d,
          region: (d["region"] as { slug?: string } | null)?.slug ?? null,
        })),
        ["id", "name", "status", "environment", "region", "active_replica_count", "status_message"],
      );
      return res;
    }),
  );

  const envs = program.command("environments").description("Environments of a model");
  withCommon(envs.command("list").requiredOption("--model <id>", "model id")).action(
    action<Common & { model: string }>(async (flags, settings, out) => {
      const res = await new ManagementApi(settings).get<{ environments: EnvironmentView[] }>(
        `/v1/models/${flags.model}/environments`,
      );
      out.table(
        res.environments.map((e) => ({
          name: e.name,
          deployment: e.current_deployment?.id,
          status: e.current_deployment?.status,
          region: e.region_restriction?.region,
          promotion: e.in_progress_promotion?.status,
          replicas: `${e.autoscaling_settings.min_replica}-${e.autoscaling_settings.max_replica}`,
        })),
        ["name", "deployment", "status", "region", "promotion", "replicas"],
      );
      return res;
    }),
  );
  const settingsFlags = (cmd: Command) =>
    cmd
      .option("--min-replica <n>", "minimum replicas", int("--min-replica"))
      .option("--max-replica <n>", "maximum replicas", int("--max-replica"))
      .option("--redeploy-on-promotion <bool>", "copy the deployment on every promotion (true|false)")
      .option(
        "--cleanup <strategy>",
        "previous deployment after a promotion: SCALE_TO_ZERO, KEEP or DEACTIVATE",
      );
  type SettingsFlags = {
    minReplica?: number;
    maxReplica?: number;
    redeployOnPromotion?: string;
    cleanup?: string;
  };
  const settingsBody = (f: SettingsFlags) => {
    if (f.redeployOnPromotion !== undefined && !["true", "false"].includes(f.redeployOnPromotion)) {
      throw new CliError("--redeploy-on-promotion takes true or false");
    }
    if (f.cleanup !== undefined && !["SCALE_TO_ZERO", "KEEP", "DEACTIVATE"].includes(f.cleanup)) {
      throw new CliError("--cleanup takes SCALE_TO_ZERO, KEEP or DEACTIVATE");
    }
    return {
      ...(f.minReplica !== undefined || f.maxReplica !== undefined
        ? { autoscaling_settings: { min_replica: f.minReplica ?? null, max_replica: f.maxReplica ?? null } }
        : {}),
      ...(f.redeployOnPromotion !== undefined || f.cleanup !== undefined
        ? {
            promotion_settings: {
              redeploy_on_promotion:
                f.redeployOnPromotion === undefined ? null : f.redeployOnPromotion === "true",
              promotion_cleanup_strategy: f.cleanup ?? null,
            },
          }
        : {}),
    };
  };
  withCommon(
    settingsFlags(envs.command("create").argument("<name>").requiredOption("--model <id>", "model id")),
  ).action(
    action<Common & SettingsFlags & { model: string }>(async (flags, settings, out, [arg]) => {
      const name = envName(arg!);
      const res = await new ManagementApi(settings).post<EnvironmentView>(
        `/v1/models/${flags.model}/environments`,
        {
          name,
          ...settingsBody(flags),
        },
      );
      out.line(
        `Created environment ${name} on model ${flags.model}${res.region_restriction ? ` (restricted to region ${res.region_restriction.region})` : ""}.`,
      );
      return res;
    }),
  );
  withCommon(
    settingsFlags(envs.command("update").argument("<name>").requiredOption("--model <id>", "model id")),
  ).action(
    action<Common & SettingsFlags & { model: string }>(async (flags, settings, out, [name]) => {
      const res = await new ManagementApi(settings).patch<{ environment: EnvironmentView }>(
        `/v1/models/${flags.model}/environments/${name}`,
        settingsBody(flags),
      );
      out.line(`Updated environment ${name} on model ${flags.model}.`);
      return res;
    }),
  );
  withCommon(envs.command("delete").argument("<name>").requiredOption("--model <id>", "model id")).action(
    action<Common & { model: string }>(async (flags, settings, out, [name]) => {
      const res = await new ManagementApi(settings).delete(`/v1/models/${flags.model}/environments/${name}`);
      out.line(`Deleted environment ${name} of model ${flags.model}.`);
      return res;
    }),
  );

  withCommon(
    program
      .command("promote")
      .description("Promote a deployment into an environment (production by default)")
      .requiredOption("--model <id>", "model id")
      .requiredOption("--deployment <id>", "deployment id (or `development`)")
      .option("-e, --environment <env>", "target environment", "production")
      .option("--keep-previous", "keep the previous deployment running")
      .option("--dry-run", "say what the promotion would do, and change nothing"),
  ).action(
    action<
      Common & {
        model: string;
        deployment: string;
        environment: string;
        keepPrevious?: boolean;
        dryRun?: boolean;
      }
    >(async (flags, settings, out) => {
      const path = `/v1/models/${flags.model}/environments/${envName(flags.environment)}/promote`;
      const body = { deployment_id: flags.deployment, scale_down_previous_deployment: !flags.keepPrevious };
      if (flags.dryRun) {
        const plan = await new ManagementApi(settings).post<PromotionDryRunView>(path, {
          ...body,
          dry_run: true,
        });
        out.line(`Dry run (nothing changed): ${plan.message}`);
        if (plan.candidate?.status_message)
          out.line(`The candidate would show: ${plan.candidate.status_message}`);
        if (plan.in_flight_promotion) {
          out.line(
            `In flight: promotion ${plan.in_flight_promotion.id} of ${plan.in_flight_promotion.source_deployment_id} (candidate ${plan.in_flight_promotion.candidate_deployment_id}, ${plan.in_flight_promotion.status}).`,
          );
        }
        // A promotion the state would refuse fails the dry run too, so a script can stop before the real one.
        if (plan.outcome === "refused") process.exitCode = 1;
        return plan;
      }
      const res = await new ManagementApi(settings).post<DeploymentView>(path, body);
      const copied = res.id !== flags.deployment;
      out.line(
        `Promoting into ${flags.environment}: deployment ${res.id}${copied ? ` (a copy of ${flags.deployment}: redeploy${res.region ? ` into region ${res.region.slug}` : ""})` : ""}, ${res.status}.`,
      );
      out.line("Traffic switches when it is ready; cancel with `meridian cancel-promotion`.");
      return res;
    }),
  );
  withCommon(
    program
      .command("cancel-promotion")
      .description("Cancel the promotion in progress into an environment")
      .requiredOption("--model <id>", "model id")
      .requiredOption("-e, --environment <env>", "environment"),
  ).action(
    action<Common & { model: string; environment: string }>(async (flags, settings, out) => {
      const res = await new ManagementApi(settings).post<{ message: string }>(
        `/v1/models/${flags.model}/environments/${flags.environment}/cancel_promotion`,
      );
      out.line(res.message);
      return res;
    }),
  );

  withCommon(
    program
      .command("logs")
      .description("Replica logs of a deployment or an environment's deployment")
      .requiredOption("--model <id>", "model id")
      .option("--deployment <id>", "deployment id")
      .option("-e, --environment <env>", "environment")
      .option("--limit <n>", "lines", int("--limit"), 200),
  ).action(
    action<Common & { model: string; deployment?: string; environment?: string; limit: number }>(
      async (flags, settings, out) => {
        if (Boolean(flags.deployment) === Boolean(flags.environment)) {
          throw new CliError("Name exactly one of --deployment and --environment.");
        }
        const path = flags.deployment
          ? `/v1/models/${flags.model}/deployments/${flags.deployment}/logs`
          : `/v1/models/${flags.model}/environments/${flags.environment}/logs`;
        // Six days back: all a plane keeps, inside the API's 7-day window whatever the clocks' skew.
        const start = Date.now() - 6 * 24 * 60 * 60 * 1000;
        const res = await new ManagementApi(settings).get<{
          logs: Array<{ timestamp: string; plane: string; replica: string; message: string }>;
          unreachable_planes?: string[];
        }>(`${path}?limit=${flags.limit}&start_epoch_millis=${start}`);
        // The API answers newest first; a terminal reads oldest first.
        for (const l of [...res.logs].reverse()) {
          const ts = new Date(Number(BigInt(l.timestamp) / 1_000_000n)).toISOString();
          out.line(`${ts} ${l.plane}/${l.replica} ${l.message}`);
        }
        if (res.unreachable_planes?.length) out.note(`(not reachable: ${res.unreachable_planes.join(", ")})`);
        return res;
      },
    ),
  );

  withCommon(
    program
      .command("predict")
      .description(
        "Call a model through its endpoint, resolved by Meridian's DNS; prints where it was processed",
      )
      .requiredOption("--model <id>", "model id")
      .option("-e, --environment <env>", "standard endpoint of an environment")
      .option("--regional <env>", "regional endpoint of a region-restricted environment")
      .option("--deployment <id>", "a specific deployment")
      .option("-d, --data <json>", "request body (JSON)", "{}")
      .option("--data-file <file>", "read the request body from a file")
      .option("--dns <ip:port>", "Meridian's DNS (default: MERIDIAN_DNS, the profile, or up.json)")
      .option(
        "--domain <domain>",
        "inference domain (default: MERIDIAN_DOMAIN, the profile, up.json, or the control plane)",
      )
      .option("--ca <file>", "CA certificate of the ingresses (default: the profile or up.json)")
      .option("--port <port>", "ingress port (default: up.json's, else 443)", int("--port"))
      .option("--http", "plain HTTP instead of HTTPS")
      .option("--timeout <seconds>", "how long to wait for the answer", int("--timeout"), 1200),
  ).action(
    action<
      Common & {
        model: string;
        environment?: string;
        regional?: string;
        deployment?: string;
        data: string;
        dataFile?: string;
        dns?: string;
        ca?: string;
        port?: number;
        http?: boolean;
        timeout: number;
      }
    >(async (flags, settings, out) => {
      const chosen = [flags.environment, flags.regional, flags.deployment].filter(Boolean);
      if (chosen.length !== 1)
        throw new CliError("Name exactly one of --environment, --regional and --deployment.");
      const target: Target = flags.regional
        ? { form: "regional", environment: envName(flags.regional) }
        : flags.deployment
          ? { form: "deployment", deploymentId: flags.deployment }
          : { form: "standard", environment: flags.environment! };
      const body = flags.dataFile ? readFileSync(flags.dataFile, "utf8") : flags.data;
      try {
        JSON.parse(body);
      } catch {
        throw new CliError("The request body is not valid JSON.");
      }
      if (!settings.apiKey) throw new CliError("No API key: set MERIDIAN_API_KEY or run `meridian login`.");
      const result = await predict({
        domain: await domainOf(settings),
        modelId: flags.model,
        target,
        body,
        apiKey: settings.apiKey!,
        dns: settings.dns,
        caFile: settings.caFile,
        port: flags.port ?? settings.ingressPort ?? (flags.http ? 80 : 443),
        scheme: flags.http ? "http" : "https",
        timeoutMs: flags.timeout * 1000,
      });
      if (!out.json) {
        out.line(typeof result.body === "string" ? result.body : JSON.stringify(result.body, null, 2));
        const p = result.processed;
        out.note(
          `HTTP ${result.status} from ${result.url} (${result.address}): processed in region ${p.region ?? "?"} by plane ${p.plane ?? "?"}; route ${p.route ?? "?"}; deployment ${p.deployment ?? "?"}; request ${p.request_id ?? "?"}`,
        );
        if (result.warning) out.note(`Warning: ${result.warning}`);
      }
      if (result.status >= 400) process.exitCode = 1;
      return result;
    }),
  );

  registerAdminCommands(program);
  registerTlsCommands(program);
}

function registerAdminCommands(program: Command): void {
  const admin = program
    .command("admin")
    .description("Operator commands (org admins): regions, planes, restrictions");
  const regions = admin.command("regions").description("Regions");
  withCommon(regions.command("list")).action(
    action<Common>(async (_f, settings, out) => {
      const res = await new ManagementApi(settings).get<{ regions: Array<Record<string, unknown>> }>(
        "/v1/regions",
      );
      out.table(res.regions, ["slug", "display_name"]);
      return res;
    }),
  );
  withCommon(
    regions
      .command("add")
      .requiredOption("--slug <slug>", "e.g. ca")
      .requiredOption("--name <display>", "e.g. Canada"),
  ).action(
    action<Common & { slug: string; name: string }>(async (flags, settings, out) => {
      const res = await new ManagementApi(settings).post("/v1/admin/regions", {
        slug: flags.slug,
        display_name: flags.name,
      });
      out.line(`Added region ${flags.slug} (${flags.name}).`);
      return res;
    }),
  );

  const planes = admin.command("planes").description("Workload planes");
  withCommon(planes.command("list")).action(
    action<Common>(async (_f, settings, out) => {
      const res = await new ManagementApi(settings).get<{ planes: PlaneView[] }>("/v1/admin/planes");
      out.table(
        res.planes.map((p) => ({
          ...p,
          ingress: p.ingress.join(","),
          replicas: Object.entries(p.replicas)
            .map(([s, n]) => `${n} ${s}`)
            .join(", "),
          sandbox: p.sandbox?.mode,
        })),
        ["name", "region", "ingress", "capacity", "global_ingress", "replicas", "sandbox", "last_seen_at"],
      );
      // A plane without its sandbox is what an operator must not miss: say why under the table.
      for (const p of res.planes) {
        if (p.sandbox?.detail) out.line(`${p.name}: sandbox ${p.sandbox.mode}: ${p.sandbox.detail}`);
      }
      return res;
    }),
  );
  withCommon(
    planes
      .command("add")
      .requiredOption("--name <name>", "plane name")
      .requiredOption("--region <slug>", "its region")
      .requiredOption("--ingress <host:port...>", "ingress address(es)")
      .option("--capacity <n>", "replica slots", int("--capacity"), 8)
      .option("--global-ingress", "this plane is the entry for standard hostnames"),
  ).action(
    action<
      Common & { name: string; region: string; ingress: string[]; capacity: number; globalIngress?: boolean }
    >(async (flags, settings, out) => {
      const res = await new ManagementApi(settings).post<{ credential: string }>("/v1/admin/planes", {
        name: flags.name,
        region: flags.region,
        ingress: flags.ingress,
        capacity: flags.capacity,
        global_ingress: Boolean(flags.globalIngress),
      });
      out.line(`Registered plane ${flags.name} in ${flags.region}. Its credential (shown once):`);
      out.line(res.credential);
      out.line(
        `Start it: meridian plane --name ${flags.name} --region ${flags.region} --control-url ${settings.apiUrl} --token-file FILE --ingress ${flags.ingress[0]}`,
      );
      return res;
    }),
  );
  withCommon(planes.command("remove").argument("<name>")).action(
    action<Common>(async (_f, settings, out, [name]) => {
      const res = await new ManagementApi(settings).delete(`/v1/admin/planes/${name}`);
      out.line(`Removed plane ${name}; its replicas are placed again on the planes their regions allow.`);
      return res;
    }),
  );

  withCommon(
    admin
      .command("restrict")
      .description(
        "Restrict an environment group (every model of the team) to a region, and/or set its replicas' egress",
      )
      .requiredOption("-e, --environment <env>", "environment group name, e.g. prod-eu")
      .option("--region <slug>", "region, e.g. eu")
      .option(
        "--standard-endpoint-policy <policy>",
        "allow, warn or deny on the standard endpoint (with --region; default allow)",
      )
      .option(
        "--egress <policy>",
        "allow (default) or deny: whether the group's replicas may reach the network",
      )
      .option("--team <id>", "team (default: your default team)"),
  ).action(
    action<
      Common & {
        environment: string;
        region?: string;
        standardEndpointPolicy?: string;
        egress?: string;
        team?: string;
      }
    >(async (flags, settings, out) => {
      if (flags.region === undefined && flags.egress === undefined) {
        throw new CliError("give --region, --egress or both");
      }
      if (flags.region === undefined && flags.standardEndpointPolicy !== undefined) {
        throw new CliError("--standard-endpoint-policy goes with --region");
      }
      const policy = flags.standardEndpointPolicy ?? "allow";
      if (!["allow", "warn", "deny"].includes(policy)) {
        throw new CliError("--standard-endpoint-policy takes allow, warn or deny");
      }
      if (flags.egress !== undefined && !["allow", "deny"].includes(flags.egress)) {
        throw new CliError("--egress takes allow or deny");
      }
      const base = flags.team ? `/v1/teams/${flags.team}/environment_groups` : "/v1/environment_groups";
      // Only what was asked for is sent, so `--egress` alone leaves the region restriction as it is.
      const res = await new ManagementApi(settings).patch(`${base}/${envName(flags.environment)}`, {
        ...(flags.region !== undefined
          ? { region_restriction: { region: flags.region, standard_endpoint_policy: policy } }
          : {}),
        ...(flags.egress !== undefined ? { egress: flags.egress } : {}),
      });
      if (flags.region !== undefined) {
        out.line(
          `Environment group ${flags.environment} is restricted to region ${flags.region} (standard endpoint: ${policy}). Environments already serving are redeployed into ${flags.region}.`,
        );
      }
      if (flags.egress !== undefined) {
        const what = flags.egress === "deny" ? "have no network but loopback" : "may reach the network";
        out.line(
          `Environment group ${flags.environment}'s replicas ${what} (egress ${flags.egress}). Environments already serving under the other policy are redeployed under it.`,
        );
      }
      return res;
    }),
  );
  withCommon(
    admin
      .command("unrestrict")
      .description("Remove an environment group's region restriction")
      .requiredOption("-e, --environment <env>", "environment group name")
      .option("--team <id>", "team (default: your default team)"),
  ).action(
    action<Common & { environment: string; team?: string }>(async (flags, settings, out) => {
      const base = flags.team ? `/v1/teams/${flags.team}/environment_groups` : "/v1/environment_groups";
      const res = await new ManagementApi(settings).patch(`${base}/${flags.environment}`, {
        region_restriction: null,
      });
      out.line(`Environment group ${flags.environment} has no region restriction now.`);
      return res;
    }),
  );

  registerEvidenceCommands(program);
}

/** The parts of an evidence document (src/core/evidence.ts) the text output reads. */
interface EvidenceView {
  scope: { model_id: string; environment: string; restricted_to: string | null; from: string; to: string };
  pieces: Array<{ plane: string; region: string; requests: number; chain: { intact: boolean } }>;
  unreachable_planes: string[];
  totals: { records: number; client_requests: number; out_of_region: number };
}

/** Writes a document for offline checks; `-` is stdout. */
function saveDocument(path: string, doc: unknown): void {
  const text = `${JSON.stringify(doc, null, 2)}\n`;
  if (path === "-") process.stdout.write(text);
  else writeFileSync(path, text);
}

/**
 * `meridian keys` and `meridian evidence` (issue 14): what an auditor saves to check offline with
 * `meridian verify`. The key directory is public: no API key is needed for it.
 */
function registerEvidenceCommands(program: Command): void {
  withCommon(
    program
      .command("keys")
      .description(
        "Save the key directory: every plane's public keys, region and validity, retired keys kept",
      )
      .option("--out <file>", "write the directory here (- for stdout) instead of listing it"),
  ).action(
    action<Common & { out?: string }>(async (flags, settings, out) => {
      if (!settings.apiUrl) {
        throw new CliError(
          "No control plane configured: run `meridian up`, or pass --api-url URL, or set MERIDIAN_API_URL.",
        );
      }
      let res: Awaited<ReturnType<typeof request>>;
      try {
        res = await request(`${settings.apiUrl.replace(/\/$/, "")}/v1/keys`);
      } catch (err) {
        throw new CliError(`Cannot reach the control plane at ${settings.apiUrl}: ${(err as Error).message}`);
      }
      const text = await res.body.text();
      if (res.statusCode !== 200)
        throw new CliError(`GET /v1/keys → ${res.statusCode}: ${text.slice(0, 200)}`);
      const parsed = parseKeyDirectory(JSON.parse(text) as unknown);
      if (!parsed.ok) throw new CliError(`the control plane's key directory is not valid: ${parsed.error}`);
      const directory = parsed.directory;
      if (flags.out !== undefined) {
        saveDocument(flags.out, directory);
        if (flags.out !== "-") {
          out.line(`Saved ${directory.keys.length} keys to ${flags.out}.`);
          out.note(
            `Check receipts, evidence and audit chains with it: meridian verify --keys ${flags.out} …`,
          );
        }
        return flags.out === "-" ? undefined : directory;
      }
      out.table(
        directory.keys.map((k) => ({ ...k, retired_at: k.retired_at ?? "current" })),
        ["plane", "region", "key_id", "valid_from", "retired_at"],
      );
      return directory;
    }),
  );

  withCommon(
    program
      .command("evidence")
      .description(
        "Gather an environment's residency evidence from every plane (their signed pieces) for a time range",
      )
      .requiredOption("--model <id>", "model id")
      .requiredOption("-e, --environment <env>", "environment")
      .option("--from <time>", "start of the range, RFC 3339 (default: a day before --to)")
      .option("--to <time>", "end of the range, exclusive (default: now)")
      .option("--out <file>", "save the document here (- for stdout), for `meridian verify --evidence`"),
  ).action(
    action<Common & { model: string; environment: string; from?: string; to?: string; out?: string }>(
      async (flags, settings, out) => {
        const q = new URLSearchParams();
        if (flags.from !== undefined) q.set("from", flags.from);
        if (flags.to !== undefined) q.set("to", flags.to);
        const path = `/v1/models/${encodeURIComponent(flags.model)}/environments/${envName(flags.environment)}/evidence`;
        const doc = await new ManagementApi(settings).get<EvidenceView>(q.size > 0 ? `${path}?${q}` : path);
        if (flags.out !== undefined) saveDocument(flags.out, doc);
        const s = doc.scope;
        const where =
          s.restricted_to === null ? "not restricted to a region" : `restricted to region ${s.restricted_to}`;
        const say = (line: string) => (flags.out === "-" ? out.note(line) : out.line(line));
        say(`Evidence for ${s.environment} of model ${s.model_id} (${where}), ${s.from} to ${s.to}:`);
        for (const p of doc.pieces) {
          say(
            `  plane ${p.plane} (region ${p.region}): ${p.requests} records${p.chain.intact ? "" : ", its audit chain is BROKEN"}`,
          );
        }
        const t = doc.totals;
        say(
          `  ${t.client_requests} client requests (${t.records} records), ${t.out_of_region} processed outside the region`,
        );
        if (flags.out !== undefined && flags.out !== "-") {
          say(
            `Saved to ${flags.out}. Check it: meridian keys --out directory.json && meridian verify --evidence ${flags.out} --keys directory.json`,
          );
        }
        if (doc.unreachable_planes.length > 0) {
          // Saved all the same, for the record; it does not verify, since those planes' requests are missing.
          throw new CliError(
            `incomplete: plane(s) ${doc.unreachable_planes.join(", ")} did not answer; the document will not verify`,
          );
        }
        return flags.out === "-" ? undefined : doc;
      },
    ),
  );
}

/**
 * `meridian tls issue`: leaf certificates from an operator's CA, offline, as `meridian up` issues them from
 * its own — one per hostname (for the planes allowed to hold it, `--tls-dir`) or one for a plane's
 * addresses (its `--tls-cert`). Never a wildcard.
 */
function registerTlsCommands(program: Command): void {
  const tls = program.command("tls").description("TLS certificates for planes (no wildcards)");
  tls
    .command("issue")
    .description(
      "Issue {hostname}.pem + {hostname}.key.pem per --hostname (for --tls-dir), or ingress.pem + ingress.key.pem for --address (a plane's --tls-cert)",
    )
    .requiredOption("--ca-cert <file>", "the CA certificate (PEM)")
    .requiredOption("--ca-key <file>", "the CA's private key (PEM, unencrypted: ECDSA P-256/P-384 or RSA)")
    .requiredOption("--out <dir>", "directory to write into (created 0700 if missing); files are 0600")
    .option(
      "--hostname <name...>",
      "inference hostnames, one certificate each: model-{id}.D, model-{id}-{env}.D",
    )
    .option("--address <ip...>", "a plane's registered addresses: one certificate with these IP SANs")
    .option("--plane <name>", "the plane's name, the common name of the --address certificate", "plane")
    .option("--days <n>", "validity in days (default 90 for hostnames, 397 for addresses)", int("--days"))
    .option("--json", "print one JSON document instead of text")
    .action(
      async (flags: {
        caCert: string;
        caKey: string;
        out: string;
        hostname?: string[];
        address?: string[];
        plane: string;
        days?: number;
        json?: boolean;
      }) => {
        try {
          const issued = await issueTlsFiles(flags);
          if (flags.json) process.stdout.write(`${JSON.stringify({ issued }, null, 2)}\n`);
          else {
            for (const i of issued) {
              process.stdout.write(
                `Issued ${i.cert} and ${i.key} (${i.names.join(", ")}), valid until ${i.not_after}\n`,
              );
            }
          }
        } catch (err) {
          process.stderr.write(`meridian: ${err instanceof Error ? err.message : String(err)}\n`);
          process.exitCode = 1;
        }
      },
    );
}

async function issueTlsFiles(flags: {
  caCert: string;
  caKey: string;
  out: string;
  hostname?: string[];
  address?: string[];
  plane: string;
  days?: number;
}): Promise<Array<{ names: string[]; cert: string; key: string; not_after: string }>> {
  const hostnames = (flags.hostname ?? []).map((h) => h.toLowerCase().replace(/\.$/, ""));
  const addresses = flags.address ?? [];
  if (hostnames.length === 0 && addresses.length === 0)
    throw new CliError("give --hostname, --address or both");
  for (const h of hostnames) {
    if (h.includes("*")) {
      throw new CliError(
        `'${h}' is a wildcard: it would match every regional hostname under it, whichever region it belongs to. Issue one certificate per hostname.`,
      );
    }
    if (!isCertificateHostname(h))
      throw new CliError(`'${h}' is not a hostname (letters, digits, hyphens, dots)`);
  }
  const bad = addresses.find((a) => isIP(a) === 0);
  if (bad !== undefined) throw new CliError(`--address takes IP addresses, got '${bad}'`);
  if (flags.days !== undefined && flags.days < 1) throw new CliError("--days is at least 1");
  const {
    CertificateError,
    HOSTNAME_CERT_DAYS,
    PLANE_CERT_DAYS,
    issueCertificate,
    loadCertificateAuthority,
    writeCertificatePair,
  } = await import("../up/tls.ts");
  let ca: Awaited<ReturnType<typeof loadCertificateAuthority>>;
  try {
    ca = await loadCertificateAuthority(
      readFileSync(flags.caCert, "utf8"),
      readFileSync(flags.caKey, "utf8"),
    );
  } catch (err) {
    if (err instanceof CertificateError) throw new CliError(err.message);
    throw new CliError(`cannot read the CA: ${(err as Error).message}`);
  }
  mkdirSync(flags.out, { recursive: true, mode: 0o700 });
  const done: Array<{ names: string[]; cert: string; key: string; not_after: string }> = [];
  const write = (
    base: string,
    names: string[],
    issued: { notAfter: Date } & Parameters<typeof writeCertificatePair>[2],
  ) => {
    writeCertificatePair(flags.out, base, issued);
    done.push({
      names,
      cert: join(flags.out, `${base}.pem`),
      key: join(flags.out, `${base}.key.pem`),
      not_after: issued.notAfter.toISOString(),
    });
  };
  for (const hostname of hostnames) {
    write(
      hostname,
      [hostname],
      await issueCertificate(ca, { kind: "hostname", hostname }, flags.days ?? HOSTNAME_CERT_DAYS),
    );
  }
  if (addresses.length > 0) {
    const subject = { kind: "addresses" as const, plane: flags.plane, ips: addresses };
    write("ingress", addresses, await issueCertificate(ca, subject, flags.days ?? PLANE_CERT_DAYS));
  }
  return done;
}
