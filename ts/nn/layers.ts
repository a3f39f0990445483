// The layers that run in the engine, with PyTorch's constructors, defaults,
// initialisation and parameter names.
import { checkOptionNames, describe, optionNames, withName } from "../errors.js";
import { native } from "../native.js";
import type { Device, DTypeLike, Tensor } from "../tensor.js";
import { NativeModule } from "./native_module.js";

const { NativeLayer } = native;

/** Where a layer's parameters are created (default float32 on the CPU). */
export interface ParameterOptions {
  dtype?: DTypeLike;
  device?: Device;
}
const PARAMETER_OPTIONS = optionNames<ParameterOptions>()(["dtype", "device"]);
/** GELU's options (the layer's and nn.functional's): exact (erf, the default) or the tanh approximation GPT-2 used. */
export interface GeluOptions {
  approximate?: "none" | "tanh";
}
export const GELU_OPTIONS = optionNames<GeluOptions>()(["approximate"]);
const LINEAR_OPTIONS = optionNames<{ bias?: boolean } & ParameterOptions>()(["bias", "dtype", "device"]);

/** One number for both dimensions, or `[height, width]`. */
export type Size2 = number | [number, number];

function size2(value: Size2): number[] {
  return typeof value === "number" ? [value] : value;
}

/** `y = x W^T + b`: weight `[out, in]` kaiming-uniform(a=√5), bias U(±1/√in). */
export class Linear extends NativeModule {
  declare weight: Tensor;
  declare bias: Tensor | null;
  readonly inFeatures: number;
  readonly outFeatures: number;

  constructor(inFeatures: number, outFeatures: number, options: { bias?: boolean } & ParameterOptions = {}) {
    checkOptionNames("Linear", options, LINEAR_OPTIONS);
    super(NativeLayer.linear(inFeatures, outFeatures, options.bias ?? true, options.dtype, options.device));
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
  }
}

export interface Conv2dOptions extends ParameterOptions {
  stride?: Size2;
  /** Zero padding per side, or "same" (output size = input size, stride 1) / "valid" (none). */
  padding?: Size2 | "same" | "valid";
  dilation?: Size2;
  groups?: number;
  bias?: boolean;
}

/** 2-D convolution over `[N, C, H, W]`: weight `[out, in/groups, kh, kw]`, initialised as Linear. */
export class Conv2d extends NativeModule {
  declare weight: Tensor;
  declare bias: Tensor | null;
  readonly inChannels: number;
  readonly outChannels: number;

  constructor(inChannels: number, outChannels: number, kernelSize: Size2, options: Conv2dOptions = {}) {
    const padding = options.padding ?? 0;
    super(
      NativeLayer.conv2d(
        inChannels,
        outChannels,
        size2(kernelSize),
        size2(options.stride ?? 1),
        typeof padding === "string" ? padding : size2(padding),
        size2(options.dilation ?? 1),
        options.groups ?? 1,
        options.bias ?? true,
        options.dtype,
        options.device,
      ),
    );
    this.inChannels = inChannels;
    this.outChannels = outChannels;
  }
}

export interface MaxPool2dOptions {
  /** Defaults to the kernel size. */
  stride?: Size2;
  padding?: Size2;
  dilation?: Size2;
  ceilMode?: boolean;
}

export class MaxPool2d extends NativeModule {
  constructor(kernelSize: Size2, options: MaxPool2dOptions = {}) {
    super(
      NativeLayer.maxPool2d(
        size2(kernelSize),
        size2(options.stride ?? kernelSize),
        size2(options.padding ?? 0),
        size2(options.dilation ?? 1),
        options.ceilMode ?? false,
      ),
    );
  }
}

/** A table of `numEmbeddings` vectors of size `embeddingDim`, initialised N(0, 1); input: integer indices. */
export class Embedding extends NativeModule {
  declare weight: Tensor;
  readonly numEmbeddings: number;
  readonly embeddingDim: number;

  constructor(numEmbeddings: number, embeddingDim: number, options: ParameterOptions = {}) {
    checkOptionNames("Embedding", options, PARAMETER_OPTIONS);
    super(NativeLayer.embedding(numEmbeddings, embeddingDim, options.dtype, options.device));
    this.numEmbeddings = numEmbeddings;
    this.embeddingDim = embeddingDim;
  }
}

export interface LayerNormOptions extends ParameterOptions {
  eps?: number;
  /** Learnable weight (ones) and bias (zeros); default true. */
  elementwiseAffine?: boolean;
  /** With elementwiseAffine, whether to learn a bias too; default true. */
  bias?: boolean;
}
const LAYER_NORM_OPTIONS = optionNames<LayerNormOptions>()(["eps", "elementwiseAffine", "bias", "dtype", "device"]);

/** Normalises over the trailing `normalizedShape` dimensions. */
export class LayerNorm extends NativeModule {
  declare weight: Tensor | null;
  declare bias: Tensor | null;
  readonly normalizedShape: number[];

  constructor(normalizedShape: number | number[], options: LayerNormOptions = {}) {
    checkOptionNames("LayerNorm", options, LAYER_NORM_OPTIONS);
    const shape = withName("LayerNorm", () => {
      if (typeof normalizedShape === "number") return [normalizedShape];
      if (!Array.isArray(normalizedShape)) throw new TypeError(`normalizedShape must be a number or an array of numbers, got ${describe(normalizedShape)}`);
      return [...normalizedShape];
    });
    super(withName("LayerNorm", () => {
      const { eps = 1e-5, elementwiseAffine = true, bias = true, dtype, device } = options ?? {};
      if (typeof eps !== "number") throw new TypeError(`eps must be a number, got ${describe(eps)}`);
      return NativeLayer.layerNorm(shape, eps, elementwiseAffine, bias, dtype, device);
    }));
    this.normalizedShape = shape;
  }
}

/** Zeroes elements with probability `p` in training mode (scaling the rest by 1/(1-p)); identity in eval mode. */
export class Dropout extends NativeModule {
  readonly p: number;

  constructor(p = 0.5) {
    super(withName("Dropout", () => {
      if (typeof p !== "number") throw new TypeError(`p must be a probability in [0, 1], got ${describe(p)}`);
      return NativeLayer.dropout(p);
    }));
    this.p = p;
  }
}

export class ReLU extends NativeModule {
  constructor() {
    super(NativeLayer.relu());
  }
}

export class GELU extends NativeModule {
  readonly approximate: "none" | "tanh";

  constructor(options: GeluOptions = {}) {
    checkOptionNames("GELU", options, GELU_OPTIONS);
    const approximate = options.approximate ?? "none";
    super(NativeLayer.gelu(approximate));
    this.approximate = approximate;
  }
}

/** Flattens dimensions `startDim..endDim` into one. */
export class Flatten extends NativeModule {
  constructor(startDim = 1, endDim = -1) {
    super(NativeLayer.flatten(startDim, endDim));
  }
}
