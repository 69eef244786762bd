import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  decidePromotion,
  type PromotionSource,
  type PromotionTarget,
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
