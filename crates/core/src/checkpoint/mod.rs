//! Checkpoint files: safetensors written atomically, Hugging Face-style sharded
//! model files with their index, and whole checkpoint directories replaced atomically.

mod atomic;
mod safetensors_io;
mod shards;

pub use atomic::{commit_staging, staging_dir, write_atomically};
pub use safetensors_io::{load_safetensors, save_safetensors};
pub use shards::{load_model, save_model};
