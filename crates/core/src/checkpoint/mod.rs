//! Checkpoint files: safetensors written atomically, Hugging Face-style sharded
//! model files with their index, and whole checkpoint directories replaced atomically.

mod atomic;
pub mod safe_read;
mod safetensors_io;
mod shards;

pub use atomic::{check_replaceable, clean_staging, commit_staging, staging_dir, write_atomically, CHECKPOINT_MARKER};
pub use safe_read::{read_inside, JSON_LIMIT};
pub use safetensors_io::{load_safetensors, load_safetensors_in, save_safetensors};
pub use shards::{load_model, save_model};
