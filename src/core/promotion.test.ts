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
