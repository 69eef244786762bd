// Streams its answer: predict() returns an async generator, and the runtime sends each yielded chunk as
// soon as it is produced (chunked transfer coding). Strings go out as text; objects as JSON lines.

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Model {
  #environment;

  constructor({ environment }) {
    this.#environment = environment?.name ?? null;
  }

  async load() {}

  predict(input) {
    const words = String(input?.prompt ?? "streaming from Meridian")
      .split(/\s+/)
      .filter(Boolean);
    const count = Number.isInteger(input?.count) ? input.count : words.length;
    const delayMs = Number.isInteger(input?.delay_ms) ? input.delay_ms : 50;
    const environment = this.#environment;
    return (async function* () {
      for (let i = 0; i < count; i++) {
        if (i > 0) await sleep(delayMs);
        yield `${words[i % words.length]}\n`;
      }
      yield `[done in ${environment ?? "no environment"}]\n`;
    })();
  }
}
