import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  copyReasons,
  decidePromotion,
  type PromotionPlanInput,
  type PromotionSource,
  type PromotionTarget,
  planPromotion,
  previousDeploymentFate,
} from "./promotion.ts";

const env = (over: Partial<PromotionTarget> = {}): PromotionTarget => ({
  name: "prod-eu",
  region: null,
  egress: "allow",
  current_deployment_id: "old",
  redeploy_on_promotion: false,
  promotion_cleanup_strategy: "SCALE_TO_ZERO",
  promotion_in_progress: false,
  ...over,
});
const dep = (over: Partial<PromotionSource> = {}): PromotionSource => ({
  id: "new",
  status: "ACTIVE",
  is_development: false,
  region: null,
  egress: "allow",
  bound_environments: [],
  ...over,
});

describe("decidePromotion", () => {
  const cases: Array<[string, PromotionTarget, PromotionSource, boolean, unknown]> = [
    [
      "plain promotion reuses",
      env(),
      dep(),
      true,
      { candidate: "reuse", reason: "reuse", candidate_region: null },
    ],
    [
      "regional env, unrestricted deployment: forced redeploy even with redeploy off",
      env({ region: "eu" }),
      dep(),
      true,
      { candidate: "copy", reason: "region", candidate_region: "eu" },
    ],
    [
      "regional env, deployment restricted to another region: forced redeploy",
      env({ region: "eu" }),
      dep({ region: "us" }),
      true,
      { candidate: "copy", reason: "region", candidate_region: "eu" },
    ],
    [
      "regional env, deployment already under that restriction: reused",
      env({ region: "eu" }),
      dep({ region: "eu" }),
      true,
      { candidate: "reuse", reason: "reuse", candidate_region: "eu" },
    ],
    [
      "region wins over bound elsewhere",
      env({ region: "eu" }),
      dep({ bound_environments: ["staging"] }),
      true,
      { candidate: "copy", reason: "region" },
    ],
    [
      "bound to another environment: copied",
      env(),
      dep({ bound_environments: ["staging"] }),
      true,
      { candidate: "copy", reason: "bound_elsewhere", candidate_region: null },
    ],
    [
      "regional env, restricted deployment bound elsewhere: copied, stays in region",
      env({ region: "eu" }),
      dep({ region: "eu", bound_environments: ["staging-eu"] }),
      true,
      { candidate: "copy", reason: "bound_elsewhere", candidate_region: "eu" },
    ],
    [
      "redeploy_on_promotion copies",
      env({ redeploy_on_promotion: true }),
      dep(),
      true,
      { candidate: "copy", reason: "redeploy_on_promotion" },
    ],
    [
      "development deployment is copied",
      env(),
      dep({ is_development: true }),
      true,
      { candidate: "copy", reason: "development" },
    ],
    [
      "reuse into unrestricted env keeps the deployment's own region",
      env(),
      dep({ region: "eu" }),
      true,
      { candidate: "reuse", candidate_region: "eu" },
    ],
    [
      "deny group, deployment that may reach the network: forced redeploy even with redeploy off",
      env({ egress: "deny" }),
      dep(),
      true,
      { candidate: "copy", reason: "egress", candidate_egress: "deny", candidate_region: null },
    ],
    [
      "allow group, deployment sealed under deny: forced redeploy, the copy may reach the network",
      env(),
      dep({ egress: "deny" }),
      true,
      { candidate: "copy", reason: "egress", candidate_egress: "allow" },
    ],
    [
      "deny group, deployment already under deny: reused",
      env({ egress: "deny" }),
      dep({ egress: "deny" }),
      true,
      { candidate: "reuse", reason: "reuse", candidate_egress: "deny" },
    ],
    [
      "region wins over egress, and the copy gets both",
      env({ region: "eu", egress: "deny" }),
      dep(),
      true,
      { candidate: "copy", reason: "region", candidate_region: "eu", candidate_egress: "deny" },
    ],
    [
      "deployment in the region under the other policy: egress",
      env({ region: "eu", egress: "deny" }),
      dep({ region: "eu" }),
      true,
      { candidate: "copy", reason: "egress", candidate_region: "eu", candidate_egress: "deny" },
    ],
    [
      "egress wins over bound elsewhere",
      env({ egress: "deny" }),
      dep({ bound_environments: ["staging"] }),
      true,
      { candidate: "copy", reason: "egress" },
    ],
    [
      "egress wins over redeploy_on_promotion",
      env({ egress: "deny", redeploy_on_promotion: true }),
      dep(),
      true,
      { candidate: "copy", reason: "egress" },
    ],
    [
      "egress wins over development",
      env({ egress: "deny" }),
      dep({ is_development: true }),
      true,
      { candidate: "copy", reason: "egress" },
    ],
    [
      "same policy, bound elsewhere: copied under that policy",
      env({ egress: "deny" }),
      dep({ egress: "deny", bound_environments: ["staging"] }),
      true,
      { candidate: "copy", reason: "bound_elsewhere", candidate_egress: "deny" },
    ],
    ["scale_down_previous false keeps the previous", env(), dep(), false, { cleanup: "KEEP" }],
    [
      "cleanup strategy from the environment",
      env({ promotion_cleanup_strategy: "DEACTIVATE" }),
      dep(),
      true,
      { cleanup: "DEACTIVATE" },
    ],
  ];
  it.each(cases)("%s", (_name, target, source, scaleDown, expected) => {
    const decision = decidePromotion(target, source, scaleDown);
    expect(decision.kind).toBe("promote");
    expect(decision).toMatchObject(expected as object);
  });

  it("refuses a second promotion while one is in progress", () => {
    expect(decidePromotion(env({ promotion_in_progress: true }), dep(), true)).toMatchObject({
      kind: "refuse",
      code: "promotion_in_progress",
    });
  });

  it.each(["DEPLOY_FAILED", "BUILD_FAILED", "FAILED"] as const)("refuses a %s deployment", (status) => {
    expect(decidePromotion(env(), dep({ status }), true)).toMatchObject({ kind: "refuse", code: "conflict" });
  });

  it("says when the deployment already serves the environment", () => {
    expect(decidePromotion(env({ current_deployment_id: "new" }), dep(), true)).toEqual({
      kind: "already_current",
    });
  });

  it("migrates the serving deployment itself when the environment becomes regional", () => {
    expect(decidePromotion(env({ region: "eu", current_deployment_id: "new" }), dep(), true)).toMatchObject({
      kind: "promote",
      candidate: "copy",
      reason: "region",
      candidate_region: "eu",
    });
  });

  it("migrates the serving deployment itself when the group's egress policy changes", () => {
    for (const [group, deployment] of [
      ["deny", "allow"],
      ["allow", "deny"],
    ] as const) {
      expect(
        decidePromotion(
          env({ egress: group, current_deployment_id: "new" }),
          dep({ egress: deployment }),
          true,
        ),
      ).toMatchObject({ kind: "promote", candidate: "copy", reason: "egress", candidate_egress: group });
    }
  });

  it("leaves the serving deployment alone when its policy already matches", () => {
    expect(
      decidePromotion(env({ egress: "deny", current_deployment_id: "new" }), dep({ egress: "deny" }), true),
    ).toEqual({ kind: "already_current" });
  });

  it("never runs a candidate under another policy than its group's", () => {
    const policy = fc.constantFrom("allow" as const, "deny" as const);
    const region = fc.option(fc.constantFrom("us", "eu"), { nil: null });
    fc.assert(
      fc.property(
        policy,
        policy,
        region,
        region,
        fc.boolean(),
        fc.boolean(),
        fc.boolean(),
        fc.array(fc.constantFrom("staging", "prod"), { maxLength: 2 }),
        (envEgress, depEgress, envRegion, depRegion, current, redeploy, isDev, bound) => {
          const d = decidePromotion(
            env({
              egress: envEgress,
              region: envRegion,
              redeploy_on_promotion: redeploy,
              current_deployment_id: current ? "new" : "old",
            }),
            dep({ egress: depEgress, region: depRegion, is_development: isDev, bound_environments: bound }),
            true,
          );
          if (depEgress !== envEgress) expect(d).toMatchObject({ kind: "promote", candidate: "copy" });
          if (d.kind !== "promote") return;
          expect(d.candidate_egress).toBe(envEgress);
          // A reused deployment keeps running as it is, so it must already be under the group's policy.
          if (d.candidate === "reuse") expect(depEgress).toBe(envEgress);
        },
      ),
    );
  });

  it("never places a regional environment's candidate outside its region", () => {
    const region = fc.constantFrom("us", "eu", "uk", "au");
    fc.assert(
      fc.property(
        region,
        fc.option(region, { nil: null }),
        fc.boolean(),
        fc.boolean(),
        fc.array(fc.constantFrom("staging", "prod"), { maxLength: 2 }),
        (envRegion, depRegion, redeploy, isDev, bound) => {
          const d = decidePromotion(
            env({ region: envRegion, redeploy_on_promotion: redeploy }),
            dep({ region: depRegion, is_development: isDev, bound_environments: bound }),
            true,
          );
          if (d.kind !== "promote") return;
          expect(d.candidate_region).toBe(envRegion);
          if (depRegion !== envRegion) expect(d.candidate).toBe("copy");
        },
      ),
    );
  });
});

describe("previousDeploymentFate", () => {
  it.each([
    ["KEEP", false, "keep"],
    ["SCALE_TO_ZERO", false, "scale_to_zero"],
    ["DEACTIVATE", false, "deactivate"],
    ["DEACTIVATE", true, "keep"],
    ["SCALE_TO_ZERO", true, "keep"],
  ] as const)("%s (still serves another env: %s) → %s", (cleanup, serves, fate) => {
    expect(previousDeploymentFate(cleanup, serves)).toBe(fate);
  });
});

describe("copyReasons", () => {
  it("lists every reason that holds, in the order they are checked", () => {
    expect(
      copyReasons(
        env({ region: "eu", egress: "deny", redeploy_on_promotion: true }),
        dep({ is_development: true, bound_environments: ["staging"] }),
      ),
    ).toEqual(["region", "egress", "bound_elsewhere", "redeploy_on_promotion", "development"]);
    expect(copyReasons(env({ region: "eu" }), dep({ region: "eu" }))).toEqual([]);
  });
});

describe("planPromotion", () => {
  const plane = (name: string, region: string, capacity: number, used = 0, global_ingress = false) => ({
    name,
    region,
    capacity,
    used,
    global_ingress,
  });
  const PLANES = [plane("us-1", "us", 4, 0, true), plane("eu-1", "eu", 2), plane("eu-2", "eu", 2)];
  const input = (over: Partial<PromotionPlanInput> = {}): PromotionPlanInput => ({
    target: env(),
    source: dep(),
    scaleDownPrevious: true,
    targetScaling: { min_replica: 1, max_replica: 1 },
    planes: PLANES,
    sourceReplicas: [],
    previousServesElsewhere: [],
    ...over,
  });
  const ready = (id: string, p: string) => ({ id, plane: p, state: "READY" as const, message: null });

  it("reuses an ACTIVE deployment: it keeps its replica and the environment switches at once", () => {
    const plan = planPromotion(input({ sourceReplicas: [ready("r1", "us-1")] }));
    expect(plan).toMatchObject({
      outcome: "promote",
      candidate: "reuse",
      reason: "reuse",
      reasons: [],
      wakes: false,
      status: "ACTIVE",
      status_message: null,
      switches: "at_once",
      placement: {
        region: null,
        replicas: 1,
        planes: [{ name: "us-1", region: "us", replicas: 1 }],
        unplaced: 0,
        has_capacity: true,
      },
      previous: { id: "old", fate: "scale_to_zero", cleanup: "SCALE_TO_ZERO" },
    });
  });

  it("forces a redeploy into the region and places it only on the region's planes", () => {
    const plan = planPromotion(
      input({ target: env({ region: "eu" }), sourceReplicas: [ready("r1", "us-1")] }),
    );
    expect(plan).toMatchObject({
      outcome: "promote",
      candidate: "copy",
      reason: "region",
      reasons: ["region"],
      candidate_region: "eu",
      status: "DEPLOYING",
      status_message: null,
      switches: "when_ready",
      placement: { region: "eu", replicas: 1, unplaced: 0, has_capacity: true },
    });
    if (plan.outcome !== "promote") throw new Error("not a promotion");
    expect(plan.placement.planes.map((p) => p.region)).toEqual(["eu"]);
  });

  it("in a full region, waits with the status message the candidate would show", () => {
    const full = [plane("us-1", "us", 4, 0, true), plane("eu-1", "eu", 2, 2), plane("eu-2", "eu", 1, 1)];
    const plan = planPromotion(input({ target: env({ region: "eu" }), planes: full }));
    expect(plan).toMatchObject({
      outcome: "promote",
      candidate: "copy",
      status: "DEPLOYING",
      status_message: "Waiting for capacity: no workload plane in region 'eu' has a free replica slot.",
      placement: { region: "eu", replicas: 1, planes: [], unplaced: 1, has_capacity: false },
    });
  });

  it("counts a copied source's own replicas as taken slots", () => {
    // The source serves staging-eu from eu-1's only slot; its copy must go to eu-2.
    const plan = planPromotion(
      input({
        target: env({ region: "eu" }),
        source: dep({ region: "eu", bound_environments: ["staging-eu"] }),
        planes: [plane("eu-1", "eu", 1), plane("eu-2", "eu", 1)],
        sourceReplicas: [ready("r1", "eu-1")],
      }),
    );
    expect(plan).toMatchObject({ candidate: "copy", reason: "bound_elsewhere" });
    if (plan.outcome !== "promote") throw new Error("not a promotion");
    expect(plan.placement.planes).toEqual([{ name: "eu-2", region: "eu", replicas: 1 }]);
  });

  it("places what the environment wants once served, and says what does not fit", () => {
    const plan = planPromotion(
      input({ target: env({ region: "eu" }), targetScaling: { min_replica: 5, max_replica: 5 } }),
    );
    expect(plan).toMatchObject({
      status: "DEPLOYING",
      status_message: null,
      placement: {
        replicas: 5,
        planes: [
          { name: "eu-1", region: "eu", replicas: 2 },
          { name: "eu-2", region: "eu", replicas: 2 },
        ],
        unplaced: 1,
        has_capacity: false,
      },
    });
  });

  it("wakes a scaled-down deployment it reuses", () => {
    const plan = planPromotion(input({ source: dep({ status: "SCALED_TO_ZERO" }) }));
    expect(plan).toMatchObject({
      candidate: "reuse",
      wakes: true,
      status: "DEPLOYING",
      switches: "when_ready",
      placement: { planes: [{ name: "us-1", replicas: 1 }] },
    });
  });

  it.each([
    ["KEEP cleanup", { target: env({ promotion_cleanup_strategy: "KEEP" }) }, "keep", "KEEP"],
    ["scale_down_previous false", { scaleDownPrevious: false }, "keep", "KEEP"],
    [
      "DEACTIVATE cleanup",
      { target: env({ promotion_cleanup_strategy: "DEACTIVATE" }) },
      "deactivate",
      "DEACTIVATE",
    ],
    [
      "a previous deployment that serves elsewhere",
      { previousServesElsewhere: ["staging"] },
      "keep",
      "SCALE_TO_ZERO",
    ],
  ] as const)("says what becomes of the previous deployment: %s", (_n, over, fate, cleanup) => {
    expect(planPromotion(input(over))).toMatchObject({ previous: { id: "old", fate, cleanup } });
  });

  it("has no previous deployment for an empty environment", () => {
    expect(planPromotion(input({ target: env({ current_deployment_id: null }) }))).toMatchObject({
      outcome: "promote",
      previous: null,
    });
  });

  it("answers the refusals and the no-op the real promotion would", () => {
    expect(planPromotion(input({ target: env({ promotion_in_progress: true }) }))).toMatchObject({
      outcome: "refused",
      code: "promotion_in_progress",
    });
    expect(planPromotion(input({ source: dep({ status: "DEPLOY_FAILED" }) }))).toMatchObject({
      outcome: "refused",
      code: "conflict",
    });
    expect(planPromotion(input({ target: env({ current_deployment_id: "new" }) }))).toEqual({
      outcome: "already_current",
    });
  });

  it("never places a regional candidate outside its region, and accounts for every replica", () => {
    const region = fc.constantFrom("us", "eu", "uk");
    const arbPlane = fc.record({
      name: fc.constantFrom("p1", "p2", "p3", "p4"),
      region,
      capacity: fc.nat(4),
      used: fc.nat(4),
      global_ingress: fc.boolean(),
    });
    fc.assert(
      fc.property(
        fc.uniqueArray(arbPlane, { selector: (p) => p.name, maxLength: 4 }),
        fc.option(region, { nil: null }),
        fc.option(region, { nil: null }),
        fc.integer({ min: 0, max: 4 }),
        fc.boolean(),
        (planes, envRegion, depRegion, min, bound) => {
          const plan = planPromotion(
            input({
              target: env({ region: envRegion }),
              source: dep({ region: depRegion, bound_environments: bound ? ["staging"] : [] }),
              planes: planes.map((p) => ({ ...p, used: Math.min(p.used, p.capacity) })),
              targetScaling: { min_replica: min, max_replica: Math.max(min, 1) },
            }),
          );
          if (plan.outcome !== "promote") throw new Error("not a promotion");
          const placed = plan.placement.planes.reduce((n, p) => n + p.replicas, 0);
          expect(placed + plan.placement.unplaced).toBe(plan.placement.replicas);
          expect(plan.placement.has_capacity).toBe(plan.placement.unplaced === 0);
          if (envRegion !== null) {
            expect(plan.placement.region).toBe(envRegion);
            for (const p of plan.placement.planes) expect(p.region).toBe(envRegion);
          }
        },
      ),
    );
  });
});
