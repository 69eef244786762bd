// Planes and the DNS responder (plane credentials): snapshots, reports, packages.

import type { FastifyReply } from "fastify";
import { MeridianError } from "../../core/errors.ts";
import { wakeFromPlane } from "../autoscaling.ts";
import type { ControlContext } from "../context.ts";
import * as internal from "../internal.ts";
import * as s from "../schemas.ts";
import { replicaSecrets } from "../secrets.ts";
import type { Infer } from "./infer.ts";
import { type Route, type RouteOptions, route } from "./route.ts";

export function internalRoutes(ctx: ControlContext, options: RouteOptions): Route[] {
  return [
    route({
      method: "GET",
      url: "/v1/internal/planes/{name}/snapshot",
      summary: "Long-polls a plane's snapshot newer than `after`",
      auth: "own_plane",
      query: s.longPollQuery,
      meridian: true,
      handler: (c) =>
        longPoll(ctx, c, options.maxWaitSeconds, async () => {
          const fresh = await ctx.store.db
            .selectFrom("planes")
            .selectAll()
            .where("name", "=", c.plane.name)
            .executeTakeFirst();
          if (!fresh) throw new MeridianError("plane_not_found");
          return internal.buildPlaneSnapshot(ctx, ctx.store.db, fresh);
        }),
    }),
    route({
      method: "POST",
      url: "/v1/internal/planes/{name}/report",
      summary: "Reports a plane's replica states and request counts",
      auth: "own_plane",
      body: s.planeReportBody,
      meridian: true,
      handler: async (c) => {
        await internal.applyReport(ctx, c.plane, c.body);
        return { revision: ctx.feed.revision() };
      },
    }),
    route({
      method: "POST",
      url: "/v1/internal/planes/{name}/wake",
      summary: "A plane holds requests for a deployment with nothing ready in its region: decide it now",
      auth: "own_plane",
      body: s.planeWakeBody,
      meridian: true,
      handler: async (c) => {
        const answer = await wakeFromPlane(ctx, c.plane, c.body);
        return c.reply.status(202).send(answer);
      },
    }),
    route({
      method: "GET",
      url: "/v1/internal/artifacts/{sha256}",
      summary: "Downloads a model package by its sha256",
      auth: "plane",
      meridian: true,
      handler: async (c) => {
        const sha256 = c.params.sha256;
        // A plane reads only the packages of replicas placed on it (404 otherwise: nothing leaks).
        if (!(await internal.planeNeedsArtifact(ctx, c.plane.name, sha256))) {
          throw new MeridianError("artifact_not_found");
        }
        const stream = await ctx.artifacts.open(sha256);
        if (!stream) throw new MeridianError("artifact_not_found");
        return c.reply.type("application/gzip").send(stream);
      },
    }),
    route({
      method: "GET",
      url: "/v1/internal/planes/{name}/replicas/{replica_id}/secrets",
      summary: "The secret values a replica placed on the plane is started with (never in a snapshot)",
      auth: "own_plane",
      meridian: true,
      handler: async (c) => {
        const answer = await replicaSecrets(ctx, c.plane, c.params.replica_id);
        // Values: no cache on the way may keep them (RFC 9111 §5.2.2.5).
        c.reply.header("cache-control", "no-store");
        return answer;
      },
    }),
    route({
      method: "GET",
      url: "/v1/internal/dns/snapshot",
      summary: "Long-polls the DNS snapshot newer than `after`",
      auth: "plane",
      query: s.longPollQuery,
      meridian: true,
      handler: (c) =>
        longPoll(ctx, c, options.maxWaitSeconds, () => internal.buildDnsSnapshot(ctx, ctx.store.db)),
    }),
  ];
}

/** 200 with a snapshot newer than `after`, or 304 once `wait` seconds pass with no change. */
async function longPoll(
  ctx: ControlContext,
  c: { query: Infer<typeof s.longPollQuery>; reply: FastifyReply },
  maxWait: number,
  build: () => Promise<{ revision: number }>,
) {
  const after = Number(c.query.after ?? 0);
  const wait = Math.min(Number(c.query.wait ?? maxWait), maxWait);
  if (ctx.feed.revision() <= after && wait > 0) {
    const gone = new AbortController();
    // The response's "close" before it was written means the plane went away: stop waiting for it.
    const onClose = () => gone.abort();
    c.reply.raw.once("close", onClose);
    await ctx.feed.wait(after, wait * 1000, gone.signal);
    c.reply.raw.off("close", onClose);
    if (gone.signal.aborted) return c.reply.status(204).send();
  }
  const snapshot = await build();
  if (snapshot.revision <= after) return c.reply.status(304).send();
  return snapshot;
}
