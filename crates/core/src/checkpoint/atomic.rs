//! Writes that never leave a half-written file or directory in place: write
//! beside the target under a temporary name, flush, then rename over it.

use crate::{Error, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

fn temporary_name(target: &Path, tag: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Writes `bytes` to `path` through a temporary file renamed into place.
pub fn write_atomically(op: &str, path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_name(path, "tmp");
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(
            op,
            std::io::Error::new(e.kind(), format!("writing {}: {e}", path.display())),
        )
    })
}

/// Creates an empty staging directory beside `dir`, to be filled then passed to `commit_staging`.
pub fn staging_dir(op: &str, dir: &Path) -> Result<PathBuf> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| io_error(op, e, parent))?;
    }
    let staging = temporary_name(dir, "staging");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(|e| io_error(op, e, &staging))?;
    Ok(staging)
}

/// Swaps a filled staging directory in as `dir`: a crash at any point leaves
/// either the previous `dir` or the complete new one. An existing `dir` is exchanged
/// with the staging directory in one atomic rename (Linux `RENAME_EXCHANGE`), then deleted.
pub fn commit_staging(op: &str, staging: &Path, dir: &Path) -> Result<()> {
    if !dir.exists() {
        return fs::rename(staging, dir).map_err(|e| io_error(op, e, dir));
    }
    exchange(staging, dir).map_err(|e| io_error(op, e, dir))?;
    let _ = fs::remove_dir_all(staging);
    Ok(())
}

/// Atomically swaps two existing paths.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths; the call only renames.
    let status = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn io_error(op: &str, e: std::io::Error, what: &Path) -> Error {
    Error::io(op, std::io::Error::new(e.kind(), format!("{}: {e}", what.display())))
}
