// The optim namespace: optimizers, gradient clipping and learning-rate schedulers (optim.lrScheduler).
export { Optimizer, SGD, Adam, AdamW } from "./optimizer.js";
export type {
  SGDOptions, AdamOptions, AdamWOptions, ParamGroup, ParamGroupInput, Params, OptimizerStateDict,
} from "./optimizer.js";
export { clipGradNorm, clipGradValue } from "./clip.js";
export * as lrScheduler from "./lr-scheduler.js";
