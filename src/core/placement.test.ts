import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type PlaneCapacity, planPlacement } from "./placement.ts";

const plane = (
  name: string,
  region: string,
  capacity = 4,
  used = 0,
  global_ingress = false,
): PlaneCapacity => ({
  name,
  region,
  capacity,
  used,
  global_ingress,
});
const PLANES = [
  plane("us-1", "us", 4, 0, true),
  plane("eu-1", "eu"),
  plane("eu-2", "eu"),
  plane("uk-1", "uk"),
];

describe("planPlacement", () => {
  it("places a restricted deployment only in its region", () => {
    expect(planPlacement({ want: 2, region: "eu", existing: [], planes: PLANES })).toEqual({
      keep: [],
      remove: [],
      add: ["eu-1", "eu-2"],
      unplaced: 0,
    });
  });

  it("prefers the global ingress plane for an unrestricted deployment", () => {
    expect(planPlacement({ want: 1, region: null, existing: [], planes: PLANES }).add).toEqual(["us-1"]);
  });

  it("waits when the region is full instead of placing elsewhere", () => {
    const full = [plane("us-1", "us", 4, 0, true), plane("eu-1", "eu", 1, 1)];
    expect(planPlacement({ want: 1, region: "eu", existing: [], planes: full })).toEqual({
      keep: [],
      remove: [],
      add: [],
      unplaced: 1,
    });
  });

  it("waits when the region has no plane at all", () => {
    expect(planPlacement({ want: 1, region: "au", existing: [], planes: PLANES }).unplaced).toBe(1);
  });

  it("keeps healthy existing replicas and removes the surplus", () => {
    const plan = planPlacement({
      want: 1,
      region: "eu",
      existing: [
        { id: "r1", plane: "eu-1" },
        { id: "r2", plane: "eu-2" },
      ],
      planes: PLANES,
    });
    expect(plan).toEqual({ keep: ["r1"], remove: ["r2"], add: [], unplaced: 0 });
  });

  it("removes replicas found outside the region or on planes that are gone", () => {
    const plan = planPlacement({
      want: 1,
      region: "eu",
      existing: [
        { id: "r1", plane: "us-1" },
        { id: "r2", plane: "gone" },
      ],
      planes: PLANES,
    });
    expect(plan.remove).toEqual(["r1", "r2"]);
    expect(plan.add).toEqual(["eu-1"]);
  });

  it("counts its own kept replicas against the plane's free slots", () => {
    const plan = planPlacement({
      want: 3,
      region: "eu",
      existing: [{ id: "r1", plane: "eu-1" }],
      planes: [plane("eu-1", "eu", 2, 1)],
    });
    expect(plan).toEqual({ keep: ["r1"], remove: [], add: [], unplaced: 2 });
  });

  it("places a second replica on another plane of the region than the first", () => {
    const eu = [plane("eu-1", "eu"), plane("eu-2", "eu")];
    const plan = planPlacement({
      want: 2,
      region: "eu",
      existing: [{ id: "r1", plane: "eu-1" }],
      planes: eu,
    });
    expect(plan).toEqual({ keep: ["r1"], remove: [], add: ["eu-2"], unplaced: 0 });
    // The other way round too: the spread follows the existing replica, not the planes' names.
    const other = planPlacement({
      want: 2,
      region: "eu",
      existing: [{ id: "r1", plane: "eu-2" }],
      planes: eu,
    });
    expect(other.add).toEqual(["eu-1"]);
  });

  it("never places a restricted replica outside its region, whatever the planes", () => {
    const regions = ["us", "eu", "uk", "au"];
    const planeArb = fc.record({
      name: fc.string({ minLength: 1, maxLength: 4 }),
      region: fc.constantFrom(...regions),
      capacity: fc.integer({ min: 0, max: 5 }),
      used: fc.integer({ min: 0, max: 5 }),
      global_ingress: fc.boolean(),
    });
    fc.assert(
      fc.property(
        fc.uniqueArray(planeArb, { selector: (p) => p.name, maxLength: 8 }),
        fc.constantFrom(...regions),
        fc.integer({ min: 0, max: 6 }),
        (planes, region, want) => {
          const plan = planPlacement({ want, region, existing: [], planes });
          const byName = new Map(planes.map((p) => [p.name, p]));
          for (const name of plan.add) expect(byName.get(name)?.region).toBe(region);
          expect(plan.add.length + plan.unplaced).toBe(want);
          for (const p of planes) {
            const added = plan.add.filter((n) => n === p.name).length;
            expect(added).toBeLessThanOrEqual(Math.max(0, p.capacity - p.used));
          }
        },
      ),
    );
  });
});

describe("planPlacement and the planes' sandboxes", () => {
  const eu = (sandbox: PlaneCapacity["sandbox"], name: string, capacity = 4) => ({
    ...plane(name, "eu", capacity),
    sandbox,
  });

  it.each<[string, PlaneCapacity[], "allow" | "deny", string[]]>([
    [
      "egress deny passes over a plane without a sandbox",
      [eu("none", "eu-1"), eu("bwrap", "eu-2")],
      "deny",
      ["eu-2", "eu-2"],
    ],
    [
      "egress allow uses a plane without a sandbox",
      [eu("none", "eu-1"), eu("bwrap", "eu-2")],
      "allow",
      ["eu-1", "eu-2"],
    ],
    [
      "a plane whose sandbox is unavailable gets nothing",
      [eu("unavailable", "eu-1"), eu("bwrap", "eu-2")],
      "allow",
      ["eu-2", "eu-2"],
    ],
    [
      "a plane that has not reported its sandbox yet is used",
      [eu(null, "eu-1"), eu(undefined, "eu-2")],
      "deny",
      ["eu-1", "eu-2"],
    ],
    // When no plane of the region can, the plane's refusal (with its reason) is what the user must see.
    [
      "when no plane of the region can, they are used, to refuse with their reason",
      [eu("none", "eu-1"), eu("unavailable", "eu-2")],
      "deny",
      ["eu-1", "eu-2"],
    ],
  ])("%s", (_name, planes, egress, add) => {
    expect(planPlacement({ want: 2, region: "eu", existing: [], planes, egress }).add.sort()).toEqual(add);
  });

  it("never leaves the region to find a plane that can, and waits when the able one is full", () => {
    const planes = [
      eu("none", "eu-1"),
      eu("bwrap", "eu-2", 1),
      { ...plane("us-1", "us"), sandbox: "bwrap" as const },
    ];
    expect(planPlacement({ want: 2, region: "eu", existing: [], planes, egress: "deny" })).toMatchObject({
      add: ["eu-2"],
      unplaced: 1,
    });
  });

  it("moves a deny replica off a plane that turned out to have no sandbox", () => {
    const planes = [eu("none", "eu-1"), eu("bwrap", "eu-2")];
    const plan = planPlacement({
      want: 1,
      region: "eu",
      existing: [{ id: "r1", plane: "eu-1" }],
      planes,
      egress: "deny",
    });
    expect(plan).toMatchObject({ keep: [], remove: ["r1"], add: ["eu-2"] });
  });
});
