// accelerate-ts data loading: datasets, collation and the DataLoader.
export { Dataset, TensorDataset, type DatasetLike } from "./dataset.js";
export { defaultCollate, type Collated } from "./collate.js";
export { DataLoader, type DataLoaderOptions, type DataLoaderState, type ShardOptions } from "./loader.js";
