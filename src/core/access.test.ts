import { describe, expect, it } from "vitest";
import {
  canManageEnvironment,
  decideManage,
  type ManageAccess,
  type ManageDecision,
  type Principal,
} from "./access.ts";
import type { ApiKeyCategory, TeamRole } from "./domain.ts";

const TEAM = "teamaaaa";
const OTHER_TEAM = "teambbbb";
const USER = "user0001";

type Kind =
  | "member"
  | "team admin"
  | "org admin"
  | "admin of another team"
  | "WORKSPACE_MANAGE_ALL"
  | "WORKSPACE_MANAGE_API_KEYS"
  | "WORKSPACE_INVOKE"
  | "WORKSPACE_EXPORT_METRICS";

function principal(kind: Kind): Principal {
  const personal = (teams: Array<[string, TeamRole]>, isOrgAdmin = false): Principal => ({
    key_prefix: "personal",
    category: "PERSONAL",
    user_id: USER,
    is_org_admin: isOrgAdmin,
    teams: new Map(teams),
    model_ids: null,
  });
  const workspace = (category: ApiKeyCategory): Principal => ({
    key_prefix: "workspac",
    category,
    user_id: null,
    is_org_admin: false,
    teams: new Map([[TEAM, "MEMBER"]]),
    model_ids: null,
  });
  switch (kind) {
    case "member":
      return personal([[TEAM, "MEMBER"]]);
    case "team admin":
      return personal([[TEAM, "TEAM_ADMIN"]]);
    case "org admin":
      // An org admin need not be in the team at all.
      return personal([], true);
    case "admin of another team":
      return personal([
        [TEAM, "MEMBER"],
        [OTHER_TEAM, "TEAM_ADMIN"],
      ]);
    default:
      return workspace(kind);
  }
}

/**
 * "Listed" puts the principal's user on the list. A workspace key has no user, so for it the listed case
 * lists every user there is (here: USER and one more): still nobody the key acts as.
 */
function access(restricted: boolean, listed: boolean): ManageAccess {
  return { is_restricted: restricted, user_ids: listed ? [USER, "user0002"] : ["user0002"] };
}

// Every principal kind × restricted / unrestricted × listed / unlisted, with the answer written out.
const TABLE: Array<[Kind, restricted: boolean, listed: boolean, allowed: boolean]> = [
  ["member", false, false, true],
  ["member", false, true, true],
  ["member", true, false, false],
  ["member", true, true, true],
  ["team admin", false, false, true],
  ["team admin", false, true, true],
  ["team admin", true, false, true],
  ["team admin", true, true, true],
  ["org admin", false, false, true],
  ["org admin", false, true, true],
  ["org admin", true, false, true],
  ["org admin", true, true, true],
  // Being an admin elsewhere gives nothing here.
  ["admin of another team", false, false, true],
  ["admin of another team", false, true, true],
  ["admin of another team", true, false, false],
  ["admin of another team", true, true, true],
  // A workspace key has no person behind it: never "a listed user", never an admin.
  ["WORKSPACE_MANAGE_ALL", false, false, true],
  ["WORKSPACE_MANAGE_ALL", false, true, true],
  ["WORKSPACE_MANAGE_ALL", true, false, false],
  ["WORKSPACE_MANAGE_ALL", true, true, false],
  // Keys without the manage capability manage nothing, restricted or not.
  ["WORKSPACE_MANAGE_API_KEYS", false, false, false],
  ["WORKSPACE_MANAGE_API_KEYS", false, true, false],
  ["WORKSPACE_MANAGE_API_KEYS", true, false, false],
  ["WORKSPACE_MANAGE_API_KEYS", true, true, false],
  ["WORKSPACE_INVOKE", false, false, false],
  ["WORKSPACE_INVOKE", false, true, false],
  ["WORKSPACE_INVOKE", true, false, false],
  ["WORKSPACE_INVOKE", true, true, false],
  ["WORKSPACE_EXPORT_METRICS", false, false, false],
  ["WORKSPACE_EXPORT_METRICS", false, true, false],
  ["WORKSPACE_EXPORT_METRICS", true, false, false],
  ["WORKSPACE_EXPORT_METRICS", true, true, false],
];

describe("canManageEnvironment (manage access, EnvironmentGroupManageAccessV1)", () => {
  it("has a row for every principal kind × restricted × listed", () => {
    const kinds = new Set(TABLE.map((r) => r[0]));
    expect(kinds.size).toBe(8);
    const cells = new Set(TABLE.map(([k, r, l]) => `${k}/${r}/${l}`));
    expect(cells.size).toBe(TABLE.length);
    expect(TABLE.length).toBe(8 * 2 * 2);
  });

  it.each(TABLE)("%s, restricted %s, listed %s: allowed %s", (kind, restricted, listed, allowed) => {
    expect(canManageEnvironment(principal(kind), TEAM, access(restricted, listed))).toBe(allowed);
  });

  it("reads the team from the change, not from the key: a team admin is a member elsewhere", () => {
    const p = principal("team admin");
    expect(canManageEnvironment(p, TEAM, access(true, false))).toBe(true);
    expect(canManageEnvironment(p, OTHER_TEAM, access(true, false))).toBe(false);
  });
});

describe("decideManage (the rule every managing route calls)", () => {
  const env = (name: string, restricted: boolean, listed: boolean) => ({
    name,
    access: access(restricted, listed),
  });

  it.each(TABLE)("one environment — %s, restricted %s, listed %s", (kind, restricted, listed, allowed) => {
    const p = principal(kind);
    const decision = decideManage(p, TEAM, [env("prod-eu", restricted, listed)]);
    const manages = !["WORKSPACE_MANAGE_API_KEYS", "WORKSPACE_INVOKE", "WORKSPACE_EXPORT_METRICS"].includes(
      kind,
    );
    const expected: ManageDecision = allowed
      ? { kind: "allowed" }
      : manages
        ? { kind: "restricted", environments: ["prod-eu"], workspace_key: p.category !== "PERSONAL" }
        : { kind: "forbidden" };
    expect(decision).toEqual(expected);
  });

  it("needs every touched restricted environment, and names the ones refused (sorted, once)", () => {
    const member = principal("member");
    const touched = [
      env("staging", false, false),
      env("prod-us", true, false),
      env("prod-eu", true, true),
      env("prod-au", true, false),
      env("prod-us", true, false),
    ];
    expect(decideManage(member, TEAM, touched)).toEqual({
      kind: "restricted",
      environments: ["prod-au", "prod-us"],
      workspace_key: false,
    });
    // Listed on one restricted environment is not listed on the other.
    expect(decideManage(member, TEAM, [env("prod-eu", true, true), env("prod-us", true, false)])).toEqual({
      kind: "restricted",
      environments: ["prod-us"],
      workspace_key: false,
    });
    expect(decideManage(member, TEAM, [env("prod-eu", true, true), env("staging", false, false)])).toEqual({
      kind: "allowed",
    });
    expect(decideManage(principal("team admin"), TEAM, touched)).toEqual({ kind: "allowed" });
  });

  it("lets a change that touches no environment through on the capability alone", () => {
    expect(decideManage(principal("member"), TEAM, [])).toEqual({ kind: "allowed" });
    expect(decideManage(principal("WORKSPACE_MANAGE_ALL"), TEAM, [])).toEqual({ kind: "allowed" });
    expect(decideManage(principal("WORKSPACE_INVOKE"), TEAM, [])).toEqual({ kind: "forbidden" });
    expect(decideManage(principal("WORKSPACE_MANAGE_API_KEYS"), TEAM, [])).toEqual({ kind: "forbidden" });
  });

  it("says when the refused principal is a workspace key (no person behind it)", () => {
    expect(decideManage(principal("WORKSPACE_MANAGE_ALL"), TEAM, [env("prod-eu", true, true)])).toEqual({
      kind: "restricted",
      environments: ["prod-eu"],
      workspace_key: true,
    });
  });
});
