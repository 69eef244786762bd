// An OpenAI-compatible chat model with fake tokens (no dependencies). The runtime maps OpenAI's routes to
// methods: chatCompletions(body) serves POST /v1/chat/completions, completions(body) /v1/completions; an
// async generator of objects streams them as Server-Sent Events (`data: {...}`, then `data: [DONE]`).
// websocket(ws) serves the websocket route: here, an echo that also says where it runs.

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Model {
  #environment;

  constructor({ environment }) {
    this.#environment = environment?.name ?? null;
  }

  async load() {}

  /** The truss predict route still works: `{"prompt": "..."}` → the reply as JSON. */
  predict(input) {
    return { reply: this.#reply(String(input?.prompt ?? "")).join("") };
  }

  chatCompletions(body) {
    const messages = Array.isArray(body?.messages) ? body.messages : [];
    const last = messages.at(-1);
    const prompt = typeof last?.content === "string" ? last.content : "";
    const tokens = this.#reply(prompt);
    const maxTokens = Number.isInteger(body?.max_tokens) ? body.max_tokens : tokens.length;
    // OpenAI's metadata values are strings: "150" as well as 150.
    const delay = Number(body?.metadata?.delay_ms);
    const delayMs = Number.isInteger(delay) && delay >= 0 ? delay : 20;
    const id = `chatcmpl-${Math.random().toString(36).slice(2, 14)}`;
    const created = Math.floor(Date.now() / 1000);
    const model = body?.model ?? "openai-js";
    const out = tokens.slice(0, maxTokens);
    const usage = {
      prompt_tokens: prompt.split(/\s+/).filter(Boolean).length,
      completion_tokens: out.length,
    };
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    const finish = out.length < tokens.length ? "length" : "stop";
    if (!body?.stream) {
      return {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [{ index: 0, message: { role: "assistant", content: out.join("") }, finish_reason: finish }],
        usage,
      };
    }
    const chunk = (delta, finish_reason = null) => ({
      id,
      object: "chat.completion.chunk",
      created,
      model,
      choices: [{ index: 0, delta, finish_reason }],
    });
    return (async function* () {
      yield chunk({ role: "assistant", content: "" });
      for (const token of out) {
        await sleep(delayMs);
        yield chunk({ content: token });
      }
      yield chunk({}, finish);
    })();
  }

  completions(body) {
    const prompt = typeof body?.prompt === "string" ? body.prompt : "";
    return {
      id: `cmpl-${Math.random().toString(36).slice(2, 14)}`,
      object: "text_completion",
      created: Math.floor(Date.now() / 1000),
      model: body?.model ?? "openai-js",
      choices: [{ index: 0, text: this.#reply(prompt).join(""), finish_reason: "stop" }],
    };
  }

  /** Echoes each message back (text as text, binary as binary), prefixed with the environment's name. */
  websocket(ws) {
    const where = this.#environment ?? "no environment";
    ws.on("message", (m) => {
      if (m.type === "text") ws.send(`${where}: ${m.data}`);
      else ws.send(m.data);
    });
  }

  /** Fake tokens: the prompt's words echoed back, then where this replica runs. */
  #reply(prompt) {
    const words = prompt.split(/\s+/).filter(Boolean);
    const tokens = ["You", " said"];
    for (const w of words) tokens.push(` ${w}`);
    tokens.push(` (from ${this.#environment ?? "no environment"})`);
    return tokens;
  }
}
