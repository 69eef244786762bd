// The truss CLI's push and predict, replayed against real processes: `meridian control` and four planes
// (us, eu, uk, au) serving TLS with a local CA. Every call is the CLI's own (test/support/truss-cli.ts): its
// GraphQL documents sent with Python's requests, the package packed as an uncompressed tar, the upload by
// boto3 with the credentials answer's extra keys passed to boto3.resource("s3", …), the REST polling of
// `--wait`, and `truss predict --published`'s POST to the hostname the answers give, resolved the way
// Meridian's DNS answers a standard name. A new model goes into prod-eu (restricted to eu) and runs only
// there; a second push, `--promote --deployment-name v2`, is a multipart upload.
//
// The package is examples/hello-py, a truss model.py: the planes serve it with Meridian's Python host, in
// their sandbox (test/e2e/truss-python.test.ts covers secrets, requirements, streaming and bad packages).

import { randomBytes } from "node:crypto";
import { cpSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type CertificateAuthority,
  ensureLocalCa,
  ensurePlaneCertificate,
  issueCertificate,
  writeCertificatePair,
} from "../../src/up/tls.ts";
import { type Cluster, DOMAIN, FOUR_REGIONS, startCluster } from "../support/cluster.ts";
import { EXAMPLES, tempDir } from "../support/control.ts";
import { PlacementWatch } from "../support/planes.ts";
import {
  createModelMutation,
  createVersionMutation,
  encodeConfig,
  HELLO_PY_CONFIG,
  modelByIdQuery,
  modelsQuery,
  modelWithVersionsQuery,
  pushVariables,
  TEAMS_QUERY,
  TRUSS_USER_ENV,
  trussClient,
  UPLOAD_CREDENTIALS_QUERY,
  validateTrussQuery,
} from "../support/truss-cli.ts";

const PLANE_HOSTS = ["127.0.1.1", "127.0.2.1", "127.0.3.1", "127.0.4.1"];
/** examples/{PACKAGE}, pushed under its config's model_name. */
const PACKAGE = "hello-py";

describe("truss push and truss predict, replayed against a control plane and four regions", () => {
  let cluster: Cluster;
  let ca: { ca: CertificateAuthority; caFile: string };
  /** The global ingress's certificates by hostname (`--tls-dir`): standard names live there only. */
  let namesDir: string;
  let work: string;
  let apiKey: string;
  let watch: PlacementWatch;

  /** One GraphQL call as BasetenApi._post_graphql_query makes it; fails the test on an error answer. */
  async function graphql(query: string, variables?: Record<string, unknown>) {
    const out = await trussClient(work, {
      op: "graphql",
      url: `${cluster.controlUrl}/graphql/`,
      api_key: apiKey,
      query,
      ...(variables ? { variables } : {}),
    });
    expect(out.http_error, JSON.stringify(out)).toBeUndefined();
    expect(out.api_error, JSON.stringify(out)).toBeUndefined();
    return out.data;
  }

  /** Steps 1–6 of a push: teams, team resolution, validation, credentials, pack, boto3 upload. */
  async function prepare(packageDir: string) {
    const teams = (await graphql(TEAMS_QUERY)).teams as Array<{ id: string; name: string; default: boolean }>;
    // One team: the CLI takes it without asking (resolve_model_team_name, scenario 6/7).
    expect(teams).toHaveLength(1);
    const team = teams[0]!;
    const everywhere = (await graphql(modelsQuery(null))).models;
    const inTeam = (await graphql(modelsQuery(team.id))).models as Array<{ id: string; name: string }>;
    expect(inTeam).toEqual(everywhere);
    const existing = inTeam.find((m) => m.name === PACKAGE)?.id ?? null;
    const config = encodeConfig(HELLO_PY_CONFIG);
    const validation = (await graphql(validateTrussQuery(config), { trussUserEnv: TRUSS_USER_ENV }))
      .truss_validation;
    expect(validation.success, validation.details).toBe(true);
    const credentials = (await graphql(UPLOAD_CREDENTIALS_QUERY)).model_s3_upload_credentials;
    const packed = await trussClient(work, { op: "pack", dir: packageDir });
    const uploaded = await trussClient(work, { op: "upload", credentials, file: packed.file });
    // Exactly what reached boto3.resource("s3", **rest): nothing it would refuse.
    expect(uploaded.kwargs).toEqual([
      "aws_access_key_id",
      "aws_secret_access_key",
      "aws_session_token",
      "endpoint_url",
      "region_name",
    ]);
    // The archive is the CLI's: an uncompressed tar ("ustar" at offset 257), whatever its name says.
    expect(readFileSync(packed.file).subarray(257, 262).toString()).toBe("ustar");
    return { team, existing, config, s3_key: uploaded.s3_key as string, size: packed.size as number };
  }

  /** `truss push --wait`: GET /v1/models/{m}/deployments/{d} every second until ACTIVE. */
  async function waitActive(model: string, version: string): Promise<Record<string, unknown>> {
    const deadline = Date.now() + 120_000;
    for (;;) {
      const polled = await trussClient(work, {
        op: "rest_get",
        url: `${cluster.controlUrl}/v1/models/${model}/deployments/${version}`,
        api_key: apiKey,
      });
      expect(polled.status, JSON.stringify(polled.body)).toBe(200);
      const status = polled.body.status as string;
      if (status === "ACTIVE") return polled.body;
      // truss's DEPLOYING_STATUSES; anything else fails the push.
      expect(["BUILDING", "DEPLOYING", "LOADING_MODEL", "UPDATING"], JSON.stringify(polled.body)).toContain(
        status,
      );
      if (Date.now() > deadline) throw new Error(`deployment ${version} still ${status}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  /** Issues the global ingress a certificate for `hostname` and waits until it serves it (SNI). */
  async function holdName(hostname: string, address: string, port: number) {
    writeCertificatePair(
      namesDir,
      hostname,
      await issueCertificate(ca.ca, { kind: "hostname", hostname }, 90),
    );
    const deadline = Date.now() + 10_000;
    for (;;) {
      const ok = await new Promise<boolean>((resolve) => {
        const s = tlsConnect({ host: address, port, servername: hostname, ca: readFileSync(ca.caFile) });
        s.once("secureConnect", () => {
          s.destroy();
          resolve(true);
        });
        s.once("error", () => resolve(false));
      });
      if (ok) return;
      if (Date.now() > deadline) throw new Error(`us-1 does not serve ${hostname}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /**
   * `truss predict --published`: the model with its versions, the primary one, then a POST to
   * `{hostname}/deployment/{id}/predict`, the standard name resolved to the global ingress (as Meridian's DNS
   * answers it) and TLS checked against the local CA (REQUESTS_CA_BUNDLE).
   */
  async function predictPublished(model: string, body: unknown) {
    const m = (await graphql(modelWithVersionsQuery(model))).model;
    const primary = (m.versions as Array<{ id: string; is_primary: boolean }>).filter((v) => v.is_primary);
    expect(primary).toHaveLength(1);
    const host = new URL(m.hostname as string);
    const global = cluster.plane("us-1");
    await holdName(host.hostname, global.host, global.port);
    expect(host.port).toBe(String(global.port));
    const answer = await trussClient(
      work,
      {
        op: "predict",
        url: `${m.hostname}/deployment/${primary[0]!.id}/predict`,
        api_key: apiKey,
        body,
        hosts: { [host.hostname]: global.host },
      },
      { REQUESTS_CA_BUNDLE: ca.caFile },
    );
    return { primary: primary[0]!.id, answer };
  }

  beforeAll(async () => {
    work = tempDir();
    // As `meridian up` issues them: each plane its own certificate (its address), standard names on the
    // global ingress only, by hostname (docs/operator-guide.md, TLS).
    ca = await ensureLocalCa(join(work, "tls"), DOMAIN);
    namesDir = join(work, "tls", "us-1-names");
    mkdirSync(namesDir, { recursive: true });
    const planes = await Promise.all(
      FOUR_REGIONS.map(async (p, i) => {
        mkdirSync(join(work, "tls", p.name), { recursive: true });
        const own = await ensurePlaneCertificate(ca.ca, join(work, "tls", p.name), p.name, [PLANE_HOSTS[i]!]);
        const args = ["--tls-cert", own.certFile, "--tls-key", own.keyFile, "--peer-ca", ca.caFile];
        if (p.global) args.push("--tls-dir", namesDir);
        return { ...p, args };
      }),
    );
    cluster = await startCluster({ planes });
    apiKey = cluster.api.key!;
    const restricted = await cluster.api.patch("/v1/environment_groups/prod-eu", {
      region_restriction: { region: "eu" },
    });
    expect(restricted.status, JSON.stringify(restricted.body)).toBe(200);
    watch = new PlacementWatch(cluster).start();
  }, 120_000);
  afterAll(async () => {
    watch?.stop();
    await cluster?.stop();
  }, 60_000);

  let model: string;
  let first: string;

  it("truss push --environment prod-eu --wait: a new model, running only in eu, answering there", async () => {
    const dir = join(work, PACKAGE);
    cpSync(join(EXAMPLES, PACKAGE), dir, { recursive: true });
    const push = await prepare(dir);
    expect(push.existing).toBeNull();
    // Up to 8 MiB: boto3 sends one PUT.
    expect(push.size).toBeLessThan(8 * 1024 * 1024);
    const created = (
      await graphql(
        createModelMutation({
          name: PACKAGE,
          s3_key: push.s3_key,
          config: push.config,
          environment: "prod-eu",
          team_id: push.team.id,
        }),
        pushVariables(null, readFileSync(join(dir, "config.yaml"))),
      )
    ).create_model_from_truss.model_version;
    expect(created.instance_type).toEqual({ name: "meridian-cpu" });
    model = created.oracle.id;
    first = created.id;
    expect(created.oracle.hostname).toBe(`https://model-${model}.${DOMAIN}:${cluster.plane("us-1").port}`);

    const active = await waitActive(model, first);
    expect(active).toMatchObject({ region: { slug: "eu" }, environment: "prod-eu" });
    await watch.sample();
    expect(watch.planesOf(first)).toEqual(["eu-1"]);

    const { primary, answer } = await predictPublished(model, { prompt: "Hello, world!" });
    expect(primary).toBe(first);
    expect(answer.status, JSON.stringify(answer)).toBe(200);
    expect(answer.json).toEqual({
      message: "Hello from prod-eu",
      environment: "prod-eu",
      model_id: model,
      echo: { prompt: "Hello, world!" },
    });
    // Entered at the global ingress (us-1), processed in eu.
    expect(answer.headers["x-meridian-region"]).toBe("eu");
    expect(answer.headers["x-meridian-plane"]).toBe("eu-1");
  }, 240_000);

  it("truss push --promote --deployment-name v2: a new version into production, uploaded in parts", async () => {
    expect(model).toBeDefined();
    const dir = join(work, `${PACKAGE}-v2`);
    cpSync(join(EXAMPLES, PACKAGE), dir, { recursive: true });
    mkdirSync(join(dir, "data"), { recursive: true });
    // Over 8 MiB: boto3's multipart upload, parts sent concurrently.
    writeFileSync(join(dir, "data", "weights.bin"), randomBytes(9 * 1024 * 1024));
    const push = await prepare(dir);
    expect(push.existing).toBe(model);
    expect(push.size).toBeGreaterThan(8 * 1024 * 1024);
    const v2 = (
      await graphql(
        createVersionMutation({
          model_id: model,
          s3_key: push.s3_key,
          config: push.config,
          deployment_name: "v2",
          environment: "production",
        }),
        pushVariables({ pushed_by: "replay" }, readFileSync(join(dir, "config.yaml"))),
      )
    ).create_model_version_from_truss.model_version;
    expect(v2.oracle.id).toBe(model);
    const active = await waitActive(model, v2.id);
    expect(active).toMatchObject({ name: "v2", labels: { pushed_by: "replay" }, is_production: true });

    const { primary, answer } = await predictPublished(model, { prompt: "v2?" });
    expect(primary).toBe(v2.id);
    // `truss predict --model M --published` reads the same primary from primary_version.
    const byId = (await graphql(modelByIdQuery(model))).model;
    expect(byId.primary_version).toMatchObject({
      id: v2.id,
      is_draft: false,
      current_model_deployment_status: { status: "MODEL_READY" },
    });
    expect(answer.status, JSON.stringify(answer)).toBe(200);
    expect(answer.json).toMatchObject({ message: "Hello from production", echo: { prompt: "v2?" } });
    // prod-eu still serves the first push, only in eu.
    const prodEu = await cluster.api.get(`/v1/models/${model}/environments/prod-eu`);
    expect(prodEu.body.current_deployment.id).toBe(first);
    await watch.sample();
    expect(watch.outside([first], "eu")).toEqual([]);
  }, 240_000);
});
