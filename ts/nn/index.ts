// The nn namespace: Module for models written in TS, native layers, containers,
// nn.functional and nn.init (mirroring torch.nn).
export { Module } from "./module.js";
export type { StateDict, LoadStateDictOptions, LoadStateDictResult } from "./module.js";
export { Linear, Conv2d, MaxPool2d, Embedding, LayerNorm, Dropout, ReLU, GELU, Flatten } from "./layers.js";
export type { ParameterOptions, Size2, Conv2dOptions, MaxPool2dOptions, LayerNormOptions, GeluOptions } from "./layers.js";
export { Sequential, ModuleList } from "./containers.js";
export { CausalSelfAttention } from "./attention.js";
export type { CausalSelfAttentionOptions } from "./attention.js";
export * as functional from "./functional.js";
export * as init from "./init.js";
export * as utils from "./utils.js";
export type { PadSequenceOptions } from "./utils.js";
