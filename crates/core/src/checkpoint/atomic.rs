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

/// The file every checkpoint directory written by `saveState` holds.
pub const CHECKPOINT_MARKER: &str = "accelerator_state.json";

/// Refuses to let a save replace `dir` unless it is absent, an empty directory, or a
/// checkpoint directory (holding `CHECKPOINT_MARKER`): a save never swallows a file,
/// a symbolic link or a directory of something else.
pub fn check_replaceable(op: &str, dir: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(op, e, dir)),
    };
    let refuse = |what: &str| {
        Err(Error::invalid(
            op,
            format!(
                "{} {what}, not a checkpoint directory; a save replaces only a checkpoint (holding {CHECKPOINT_MARKER}) or an empty directory. Choose another path or remove it",
                dir.display()
            ),
        ))
    };
    if meta.file_type().is_symlink() {
        return refuse("is a symbolic link");
    }
    if !meta.is_dir() {
        return refuse("is a file");
    }
    if dir.join(CHECKPOINT_MARKER).is_file() {
        return Ok(());
    }
    let mut entries = fs::read_dir(dir).map_err(|e| io_error(op, e, dir))?;
    if entries.next().is_some() {
        return refuse("is a directory of other files");
    }
    Ok(())
}

/// The process id in a temporary name written by `temporary_name` for `target`, if `name` is one.
fn owner_of(target_name: &str, name: &str) -> Option<i32> {
    [".staging-", ".tmp-"].iter().find_map(|tag| {
        name.strip_prefix(&format!(".{target_name}{tag}"))
            .and_then(|pid| pid.parse::<i32>().ok())
    })
}

fn process_is_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks whether the process exists; nothing is sent.
    let status = unsafe { libc::kill(pid, 0) };
    status == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes what interrupted saves of `dir` left beside it: staging directories and
/// temporary files whose process is gone (this process's own are removed too, as a
/// save of this process that is still running would not be asking). Returns the
/// paths removed.
pub fn clean_staging(op: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    let Some(target_name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(Vec::new());
    };
    let parent = match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => parent.to_path_buf(),
        None => PathBuf::from("."),
    };
    let entries = match fs::read_dir(&parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(op, e, &parent)),
    };
    let me = std::process::id() as i32;
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_of(&target_name, &name) else {
            continue;
        };
        if pid != me && process_is_alive(pid) {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let result = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        result.map_err(|e| io_error(op, e, &path))?;
        removed.push(path);
    }
    Ok(removed)
}

/// Creates an empty staging directory beside `dir`, to be filled then passed to
/// `commit_staging`, after checking that `dir` may be replaced and removing the
/// staging left by interrupted saves.
pub fn staging_dir(op: &str, dir: &Path) -> Result<PathBuf> {
    check_replaceable(op, dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| io_error(op, e, parent))?;
    }
    clean_staging(op, dir)?;
    let staging = temporary_name(dir, "staging");
    fs::create_dir_all(&staging).map_err(|e| io_error(op, e, &staging))?;
    Ok(staging)
}

/// Swaps a filled staging directory in as `dir`: a crash at any point leaves
/// either the previous `dir` or the complete new one. An existing `dir` is exchanged
/// with the staging directory in one atomic rename (Linux `RENAME_EXCHANGE`), then
/// deleted. A `dir` that is not a checkpoint is refused (see `check_replaceable`).
pub fn commit_staging(op: &str, staging: &Path, dir: &Path) -> Result<()> {
    if let Err(e) = check_replaceable(op, dir) {
        let _ = fs::remove_dir_all(staging);
        return Err(e);
    }
    if fs::symlink_metadata(dir).is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("acc-atomic-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let _ = fs::create_dir_all(&root);
        root
    }

    #[test]
    fn refuses_to_replace_what_is_not_a_checkpoint() -> Result<()> {
        let root = scratch("refuse");
        let io = |e| Error::io("test", e);
        let file = root.join("weights.bin");
        fs::write(&file, b"precious").map_err(io)?;
        let other = root.join("photos");
        fs::create_dir_all(&other).map_err(io)?;
        fs::write(other.join("cat.jpg"), b"meow").map_err(io)?;
        for target in [&file, &other] {
            let err = staging_dir("saveState", target)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.starts_with("saveState: ") && err.contains("not a checkpoint directory"),
                "{err}"
            );
            let staging = root.join("filled");
            fs::create_dir_all(&staging).map_err(io)?;
            assert!(commit_staging("saveState", &staging, target).is_err());
        }
        assert_eq!(fs::read(&file).map_err(io)?, b"precious");
        assert_eq!(fs::read(other.join("cat.jpg")).map_err(io)?, b"meow");
        let names: Vec<String> = fs::read_dir(&root)
            .map_err(io)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("staging")), "{names:?}");

        let ckpt = root.join("ckpt");
        for round in 0..2 {
            let staging = staging_dir("saveState", &ckpt)?;
            fs::write(staging.join(CHECKPOINT_MARKER), format!("{round}")).map_err(io)?;
            commit_staging("saveState", &staging, &ckpt)?;
        }
        assert_eq!(fs::read(ckpt.join(CHECKPOINT_MARKER)).map_err(io)?, b"1");
        let _ = fs::remove_dir_all(&root);
        Ok(())
    }

    #[test]
    fn the_next_save_removes_staging_of_dead_processes_only() -> Result<()> {
        let root = scratch("clean");
        let io = |e| Error::io("test", e);
        let ckpt = root.join("ckpt");
        // A pid above the kernel's maximum (4194304) never names a live process.
        let dead = root.join(".ckpt.staging-99999999");
        fs::create_dir_all(dead.join("inner")).map_err(io)?;
        fs::write(root.join(".ckpt.tmp-99999998"), b"x").map_err(io)?;
        let alive = root.join(".ckpt.staging-1");
        fs::create_dir_all(&alive).map_err(io)?;
        let unrelated = root.join(".other.staging-99999999");
        fs::create_dir_all(&unrelated).map_err(io)?;
        let staging = staging_dir("saveState", &ckpt)?;
        assert!(!dead.exists() && !root.join(".ckpt.tmp-99999998").exists());
        assert!(alive.exists(), "pid 1 is alive: its staging stays");
        assert!(unrelated.exists(), "another target's staging stays");
        commit_staging("saveState", &staging, &ckpt)?;
        fs::create_dir_all(&dead).map_err(io)?;
        let removed = clean_staging("loadState", &ckpt)?;
        assert_eq!(removed, vec![dead.clone()]);
        let _ = fs::remove_dir_all(&root);
        Ok(())
    }
}
