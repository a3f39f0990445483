// The tracker contract (HF Accelerate's `GeneralTracker`): what `Accelerator.log`
// calls on every tracker, built in or the user's own.

/** One `log` call's values: numbers become scalars; strings and booleans are kept where a tracker can. */
export type LogValues = Record<string, number | string | boolean>;

/** A run's configuration (hyperparameters) as JSON. */
export type TrackerConfig = Record<string, unknown>;

/**
 * A destination for metrics. Pass an instance in `logWith` to use your own; the
 * Accelerator calls it on the main process only.
 */
export interface GeneralTracker {
  /** The name `getTracker(name)` finds it by. */
  readonly name: string;
  /** Whether it writes under the Accelerator's `projectDir` (built-in ones do). */
  readonly requiresLoggingDirectory: boolean;
  /** Called once by `initTrackers` with the run's configuration. */
  storeInitConfiguration(config: TrackerConfig): void;
  /** Called by `Accelerator.log`; `step` is the given step or, without one, the number of earlier `log` calls. */
  log(values: LogValues, step: number): void;
  /** Called by `endTraining`: flush and close. */
  finish(): void;
}
