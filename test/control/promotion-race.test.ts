// One promotion at a time per environment (DESIGN.md §2.5), under real concurrency on both stores: of
// concurrent promotions into one environment exactly one wins; the others get 409 promotion_in_progress
// and leave nothing behind (no copied deployment, no audit entry, one active promotion row).

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ApiClient, startTestControl, type TestControl } from "../support/control.ts";
import { STORE_KINDS } from "../support/databases.ts";
import { expectError } from "../support/reference.ts";

describe.each(STORE_KINDS)("concurrent promotions on %s", (kind) => {
  let t: TestControl;
  let admin: ApiClient;
  let modelId: string;
  const deployments: string[] = [];

  beforeAll(async () => {
    t = await startTestControl(kind);
    admin = t.admin;
    const created = await admin.createModel("racer");
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    modelId = created.body.model.id;
    deployments.push(created.body.deployment.id);
    for (let i = 0; i < 9; i++) {
      const d = await admin.createDeployment(modelId);
      expect(d.status, JSON.stringify(d.body)).toBe(200);
      deployments.push(d.body.deployment.id);
    }
  });
  afterAll(async () => t?.stop());

  async function activePromotions(env: string) {
    return t.control.ctx.store.db
      .selectFrom("promotions")
      .selectAll()
      .where("model_id", "=", modelId)
      .where("environment", "=", env)
      .where("active", "=", 1)
      .execute();
  }

  async function count(table: "deployments" | "audit_logs" | "promotions") {
    const row = await t.control.ctx.store.db
      .selectFrom(table)
      .select((eb) => eb.fn.countAll<string | number>().as("n"))
      .executeTakeFirstOrThrow();
    return Number(row.n);
  }

  /** Fires one promotion per source at once; checks one winner and returns it. */
  async function race(env: string, sources: string[], expectCopies: boolean) {
    const before = { deployments: await count("deployments"), audit: await count("audit_logs") };
    const results = await Promise.all(
      sources.map((deployment_id) =>
        admin.post(`/v1/models/${modelId}/environments/${env}/promote`, { deployment_id }),
      ),
    );
    const winners = results.filter((r) => r.status === 200);
    const losers = results.filter((r) => r.status !== 200);
    expect(winners, JSON.stringify(results.map((r) => [r.status, r.body?.error_code]))).toHaveLength(1);
    for (const l of losers) expectError(l, 409, "promotion_in_progress");

    const active = await activePromotions(env);
    expect(active).toHaveLength(1);
    const winner = winners[0]!.body;
    expect(active[0]!.candidate_deployment_id).toBe(winner.id);
    const view = await admin.get(`/v1/models/${modelId}/environments/${env}`);
    expect(view.body.in_progress_promotion).toMatchObject({ status: "RELEASING" });
    expect(view.body.candidate_deployment.id).toBe(winner.id);
    // Losers wrote nothing: one copy at most (the winner's), one audit entry.
    expect(await count("deployments")).toBe(before.deployments + (expectCopies ? 1 : 0));
    expect(await count("audit_logs")).toBe(before.audit + 1);
    return winner;
  }

  it("lets exactly one of two concurrent promotions of the same deployment win", async () => {
    expect((await admin.post(`/v1/models/${modelId}/environments`, { name: "duel" })).status).toBe(200);
    await race("duel", [deployments[0]!, deployments[0]!], false);
  });

  it("lets exactly one of ten concurrent promotions of different deployments win", async () => {
    expect((await admin.post(`/v1/models/${modelId}/environments`, { name: "melee" })).status).toBe(200);
    const winner = await race("melee", deployments, false);
    expect(deployments).toContain(winner.id);
  });

  it("leaves no copied deployment behind for the losers when promotion redeploys", async () => {
    const created = await admin.post(`/v1/models/${modelId}/environments`, {
      name: "copies",
      promotion_settings: { redeploy_on_promotion: true },
    });
    expect(created.status).toBe(200);
    const winner = await race("copies", deployments, true);
    expect(deployments).not.toContain(winner.id);
    const copies = await t.control.ctx.store.db
      .selectFrom("deployments")
      .select("id")
      .where("copied_from", "is not", null)
      .where("model_id", "=", modelId)
      .execute();
    expect(copies.map((c) => c.id)).toEqual([winner.id]);
  });

  it("after a cancel, the next round again has exactly one winner", async () => {
    const canceled = await admin.post(`/v1/models/${modelId}/environments/melee/cancel_promotion`);
    expect(canceled.status).toBe(200);
    expect(await activePromotions("melee")).toHaveLength(0);
    await race("melee", deployments.slice(0, 10), false);
  });

  it("does not serialize promotions into different environments into conflicts", async () => {
    const names = ["par-a", "par-b", "par-c", "par-d", "par-e"];
    for (const name of names) {
      expect((await admin.post(`/v1/models/${modelId}/environments`, { name })).status).toBe(200);
    }
    const results = await Promise.all(
      names.map((name, i) =>
        admin.post(`/v1/models/${modelId}/environments/${name}/promote`, { deployment_id: deployments[i] }),
      ),
    );
    expect(results.map((r) => r.status)).toEqual(names.map(() => 200));
    for (const name of names) expect(await activePromotions(name)).toHaveLength(1);
  });
});
