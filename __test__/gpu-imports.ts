// What the GPU tests import: the public API plus the addon (for device counts).
export * from "../ts/index.js";
export { native } from "../ts/native.js";
