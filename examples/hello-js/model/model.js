// Echoes its input and says which environment it serves: the smallest Meridian model.
// An ES module with no dependencies; the runtime constructs Model with { environment: { name } | null }.

export class Model {
  #environment;
  #greeting = null;

  constructor({ environment }) {
    this.#environment = environment?.name ?? null;
  }

  async load() {
    // Real models read weights here. This one reads config.yaml's environment_variables.
    this.#greeting = process.env.GREETING ?? "Hi";
  }

  predict(input) {
    const where = this.#environment ?? "no environment";
    return {
      message: `${this.#greeting} from ${where}`,
      environment: this.#environment,
      model_id: process.env.MERIDIAN_MODEL_ID ?? null,
      echo: input,
    };
  }
}
