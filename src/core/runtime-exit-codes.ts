// Exit codes of `meridian serve-model`: the contract with the plane's driver, which maps them to replica
// and deployment status (load_failed and invalid_package → DEPLOY_FAILED; model_server_crashed → UNHEALTHY).

export const EXIT_CODES = {
  /** Drained after SIGTERM or SIGINT. */
  stopped: 0,
  /** An unexpected fault in the runtime itself, or the listen address could not be bound. */
  fault: 1,
  /** The command line or its environment variables are not valid. */
  usage: 2,
  /** The model's load() threw, or model/model.js could not be imported or has no Model class. */
  load_failed: 3,
  /** config.yaml is broken or the package has nothing to run. */
  invalid_package: 4,
  /** The custom server (`start_command`) exited before it became ready. */
  model_server_failed: 5,
  /** The custom server exited after it had been ready. */
  model_server_crashed: 6,
} as const;

export type ExitCode = (typeof EXIT_CODES)[keyof typeof EXIT_CODES];
