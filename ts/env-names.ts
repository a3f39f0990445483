// The environment variables through which `accelerate launch` hands strategy settings to
// the ranks (Hugging Face's names); the launcher writes them and the Accelerator reads them.
export const STRATEGY_ENV = {
  useDeepspeed: "ACCELERATE_USE_DEEPSPEED",
  zeroStage: "ACCELERATE_DEEPSPEED_ZERO_STAGE",
  deepspeedConfigFile: "ACCELERATE_DEEPSPEED_CONFIG_FILE",
  gradientClipping: "ACCELERATE_GRADIENT_CLIPPING",
  offloadOptimizerDevice: "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
  offloadParamDevice: "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
  zero3Init: "ACCELERATE_DEEPSPEED_ZERO3_INIT",
  useFsdp: "ACCELERATE_USE_FSDP",
  fsdpVersion: "FSDP_VERSION",
  fsdpReshardAfterForward: "FSDP_RESHARD_AFTER_FORWARD",
  fsdpOffloadParams: "FSDP_OFFLOAD_PARAMS",
} as const;
