// accelerate-ts: the public API.
// Node's types (streams, Symbol.dispose) are part of it; TypeScript ≥ 6 no longer loads them by default.
/// <reference types="node" preserve="true" />
export {
  Tensor, tensor, zeros, ones, full, arange, randn, rand, randint, manualSeed, cat, stack, where, noGrad, isGradEnabled, tidy, keep, liveTensors,
} from "./tensor.js";
export type { DType, DTypeLike, Device, TypedArray, NestedArray, TensorData, TensorOptions } from "./tensor.js";
export { libtorch } from "./native.js";
export { Accelerator } from "./accelerator.js";
export type { AcceleratorOptions, MixedPrecision, StateBytes } from "./accelerator.js";
export type { CheckpointSelector } from "./activation-checkpointing.js";
export type { CompileStepOptions } from "./compile-step.js";
export type { Profile, ProfileOptions, ProfileRow } from "./profiling.js";
export type { DeepSpeedConfigJson, DeepSpeedConfigValue, DeepSpeedPlugin, FsdpPlugin, OffloadDevice, StrategyConfig, ZeroStage } from "./strategy/index.js";
export type { GradScalerOptions } from "./precision.js";
export * as data from "./data/index.js";
export { progress, Progress, type ProgressOptions, type Postfix } from "./progress.js";
export * as tracking from "./tracking/index.js";
export type { GeneralTracker, LogValues, LogWith, TrackerConfig, TrackerName } from "./tracking/index.js";
export * as nn from "./nn/index.js";
export * as optim from "./optim/index.js";
export { notebookLauncher, NotebookLaunchError, type NotebookLauncherOptions } from "./launch/notebook.js";
