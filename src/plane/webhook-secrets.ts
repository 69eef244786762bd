// The team webhook secrets a plane signs async results with (X-BASETEN-SIGNATURE). They live on the control
// plane, sealed like team secrets (src/control/webhook-secrets.ts); a plane fetches a team's with its own
// credential when it has a webhook to send, and holds them in memory only, for a minute: a rotation reaches
// every plane within that, and no secret is ever written to a plane's disk or put in a snapshot.

import { type Dispatcher, request } from "undici";

export interface WebhookSecretsOptions {
  controlUrl: string;
  planeToken: string;
  plane: string;
  /** How long a fetched answer is used before it is asked again. Default 60 s. */
  ttlMs?: number;
  dispatcher?: Dispatcher;
  now?: () => number;
}

export class WebhookSecrets {
  readonly #o: WebhookSecretsOptions;
  readonly #cache = new Map<string, { at: number; secrets: string[] }>();

  constructor(options: WebhookSecretsOptions) {
    this.#o = options;
  }

  /**
   * The team's active secrets, newest first. When the control plane cannot be asked, the last answer is
   * used however old (static stability); with none, this throws and the delivery waits for its next try.
   */
  get = async (teamId: string): Promise<string[]> => {
    const now = (this.#o.now ?? Date.now)();
    const cached = this.#cache.get(teamId);
    if (cached !== undefined && now - cached.at < (this.#o.ttlMs ?? 60_000)) return cached.secrets;
    try {
      const secrets = await this.#fetch(teamId);
      if (this.#cache.size > 10_000) this.#cache.clear();
      this.#cache.set(teamId, { at: now, secrets });
      return secrets;
    } catch (err) {
      if (cached !== undefined) return cached.secrets;
      throw err;
    }
  };

  async #fetch(teamId: string): Promise<string[]> {
    const url = `${this.#o.controlUrl}/v1/internal/planes/${encodeURIComponent(this.#o.plane)}/webhook_secrets/${encodeURIComponent(teamId)}`;
    const res = await request(url, {
      headers: { authorization: `Bearer ${this.#o.planeToken}` },
      headersTimeout: 10_000,
      bodyTimeout: 10_000,
      ...(this.#o.dispatcher ? { dispatcher: this.#o.dispatcher } : {}),
    });
    const text = await res.body.text();
    if (res.statusCode !== 200) throw new Error(`the control plane answered ${res.statusCode}`);
    const body = JSON.parse(text) as { secrets?: Array<{ secret?: unknown }> };
    if (!Array.isArray(body.secrets)) throw new Error("the control plane's answer has no secrets list");
    return body.secrets.map((s) => {
      if (typeof s.secret !== "string" || s.secret.length === 0)
        throw new Error("a webhook secret is not a string");
      return s.secret;
    });
  }
}
