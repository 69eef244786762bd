import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { REPLICA_STATES, type ReplicaState } from "./domain.ts";
import { type ObservedReplica, planReconcile, type ReconcilePlan } from "./reconcile.ts";
import type { DesiredReplica } from "./snapshot.ts";

function desired(id: string, deployment_id = "dep1"): DesiredReplica {
  return {
    id,
    deployment_id,
    model_id: "abcd1234",
    environment: "production",
    artifact: { key: `k-${deployment_id}`, sha256: "0".repeat(64), size: 10 },
    egress: "allow",
  };
}

function observed(id: string, state: ReplicaState, deployment_id = "dep1"): ObservedReplica {
  return { id, deployment_id, state };
}

/** The plan reduced to ids, for readable tables. */
function ids(plan: ReconcilePlan) {
  return {
    stop: plan.stop.map((s) => `${s.id}:${s.reason}`),
    start: plan.start.map((s) => `${s.replica.id}:${s.reason}`),
    keep: plan.keep,
  };
}

const CASES: Array<{
  name: string;
  desired: DesiredReplica[];
  actual: ObservedReplica[];
  want: ReturnType<typeof ids>;
}> = [
  { name: "nothing to do", desired: [], actual: [], want: { stop: [], start: [], keep: [] } },
  {
    name: "fresh plane starts every desired replica",
    desired: [desired("r2"), desired("r1")],
    actual: [],
    want: { stop: [], start: ["r1:missing", "r2:missing"], keep: [] },
  },
  {
    name: "healthy desired replicas are kept (control plane came back)",
    desired: [desired("r1"), desired("r2")],
    actual: [observed("r1", "READY"), observed("r2", "READY")],
    want: { stop: [], start: [], keep: ["r1", "r2"] },
  },
  {
    name: "replicas no longer desired are stopped",
    desired: [desired("r1")],
    actual: [observed("r1", "READY"), observed("r9", "READY"), observed("r8", "FAILED")],
    want: { stop: ["r8:not_desired", "r9:not_desired"], start: [], keep: ["r1"] },
  },
  {
    name: "starting, unhealthy, pending and failed desired replicas are left to the driver",
    desired: [desired("a"), desired("b"), desired("c"), desired("d")],
    actual: [
      observed("a", "STARTING"),
      observed("b", "UNHEALTHY"),
      observed("c", "PENDING"),
      observed("d", "FAILED"),
    ],
    want: { stop: [], start: [], keep: ["a", "b", "c", "d"] },
  },
  {
    name: "a replica already stopping is not stopped twice",
    desired: [],
    actual: [observed("r1", "STOPPING")],
    want: { stop: [], start: [], keep: [] },
  },
  {
    name: "a desired replica that is stopping is started again",
    desired: [desired("r1")],
    actual: [observed("r1", "STOPPING")],
    want: { stop: [], start: ["r1:stopping"], keep: [] },
  },
  {
    name: "same id, other deployment: replaced",
    desired: [desired("r1", "dep2")],
    actual: [observed("r1", "READY", "dep1")],
    want: { stop: ["r1:replaced"], start: ["r1:replaced"], keep: [] },
  },
  {
    name: "mixed: keep, start, stop at once",
    desired: [desired("keep1"), desired("new1")],
    actual: [observed("keep1", "READY"), observed("old1", "READY")],
    want: { stop: ["old1:not_desired"], start: ["new1:missing"], keep: ["keep1"] },
  },
  {
    name: "duplicate desired ids count once",
    desired: [desired("r1"), desired("r1")],
    actual: [],
    want: { stop: [], start: ["r1:missing"], keep: [] },
  },
];

describe("planReconcile", () => {
  for (const c of CASES) {
    it(c.name, () => {
      expect(ids(planReconcile(c.desired, c.actual))).toEqual(c.want);
    });
  }

  it("start carries the desired replica itself", () => {
    const want = desired("r1", "dep7");
    expect(planReconcile([want], []).start[0]?.replica).toBe(want);
  });

  it("properties: never touches a desired READY replica; every id lands in exactly one place", () => {
    const id = fc.constantFrom("r1", "r2", "r3", "r4", "r5");
    const dep = fc.constantFrom("d1", "d2");
    fc.assert(
      fc.property(
        fc.array(fc.record({ id, dep }), { maxLength: 6 }),
        fc.uniqueArray(fc.record({ id, dep, state: fc.constantFrom(...REPLICA_STATES) }), {
          selector: (r) => r.id,
          maxLength: 5,
        }),
        (want, have) => {
          const d = want.map((w) => desired(w.id, w.dep));
          const a = have.map((h) => observed(h.id, h.state, h.dep));
          const plan = planReconcile(d, a);
          const desiredIds = new Set(d.map((r) => r.id));
          for (const r of a) {
            const stays =
              desiredIds.has(r.id) && d.find((x) => x.id === r.id)!.deployment_id === r.deployment_id;
            if (stays && r.state !== "STOPPING") {
              expect(plan.keep).toContain(r.id);
              expect(plan.stop.map((s) => s.id)).not.toContain(r.id);
              expect(plan.start.map((s) => s.replica.id)).not.toContain(r.id);
            }
          }
          // Every desired id is either kept or started, exactly once.
          const covered = [...plan.keep, ...plan.start.map((s) => s.replica.id)];
          expect(covered.sort()).toEqual([...desiredIds].sort());
          // Nothing undesired survives unless it is already stopping.
          for (const r of a) {
            if (!desiredIds.has(r.id) && r.state !== "STOPPING") {
              expect(plan.stop.map((s) => s.id)).toContain(r.id);
            }
          }
        },
      ),
    );
  });
});
