// ava settings for the CUDA tests (`npm run test:gpu`, on a GPU host); CI runs the CPU tests only.
export default {
  files: ["__test__/gpu/**/*.spec.ts"],
  extensions: { ts: "module" },
  nodeArguments: ["--import", "@oxc-node/core/register", "--expose-gc"],
  workerThreads: false,
  timeout: "5m",
  concurrency: 1,
};
