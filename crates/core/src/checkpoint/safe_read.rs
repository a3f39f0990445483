//! Reading checkpoint files that may come from someone else: only regular files
//! inside the checkpoint directory, read up to the size the file system declares,
//! with the file named in every error and none of its contents quoted.

use crate::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// JSON state files are small; a larger one is not ours.
pub const JSON_LIMIT: u64 = 256 << 20;

fn failure(op: &str, path: &Path, what: impl std::fmt::Display) -> Error {
    Error::invalid(op, format!("{}: {what}", path.display()))
}

/// `name` as a path inside `dir`: one plain file name, no `..`, no absolute path, no separator.
pub fn entry_path(op: &str, dir: &Path, name: &str) -> Result<PathBuf> {
    let mut components = Path::new(name).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(_)), None) if !name.contains('/') => Ok(dir.join(name)),
        _ => Err(Error::invalid(
            op,
            format!(
                "{}: the entry {:?} is not a plain file name inside the directory (absolute paths, `..` and subdirectories are refused)",
                dir.display(),
                shorten(name)
            ),
        )),
    }
}

/// A name from a file, quoted at most 80 characters long.
pub fn shorten(name: &str) -> String {
    if name.chars().count() <= 80 {
        name.to_string()
    } else {
        format!("{}…", name.chars().take(80).collect::<String>())
    }
}

fn kind_of(file_type: fs::FileType) -> &'static str {
    if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file, without following a symbolic
/// link at its last component and without blocking on a FIFO; returns it with its size.
pub fn open_regular(op: &str, path: &Path) -> Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => failure(op, path, "is a symbolic link that leaves the checkpoint directory"),
            _ => Error::io(op, std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(op, std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))))?;
    if !meta.file_type().is_file() {
        return Err(failure(
            op,
            path,
            format!(
                "is {}; checkpoint files must be regular files",
                kind_of(meta.file_type())
            ),
        ));
    }
    Ok((file, meta.len()))
}

/// Reads all of a regular file, at most `limit` bytes and never more than its declared size.
pub fn read_regular(op: &str, path: &Path, limit: u64) -> Result<Vec<u8>> {
    let (file, size) = open_regular(op, path)?;
    if size > limit {
        return Err(failure(
            op,
            path,
            format!("is {size} bytes, above the {limit} bytes such a file may have"),
        ));
    }
    let capacity = usize::try_from(size).map_err(|_| failure(op, path, "is too large for this machine"))?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(capacity)
        .map_err(|_| failure(op, path, format!("cannot allocate {size} bytes to read it")))?;
    file.take(size).read_to_end(&mut bytes).map_err(|e| {
        Error::io(
            op,
            std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display())),
        )
    })?;
    if bytes.len() as u64 != size {
        return Err(failure(op, path, "changed size while it was read"));
    }
    Ok(bytes)
}

/// Resolves `name` inside `dir`: a symbolic link is followed only when its target
/// lies inside `dir` too (a checkpoint copied with its links), never out of it.
pub fn resolve_inside(op: &str, dir: &Path, name: &str) -> Result<PathBuf> {
    let path = entry_path(op, dir, name)?;
    let is_link = fs::symlink_metadata(&path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);
    if !is_link {
        return Ok(path);
    }
    let io = |e: std::io::Error| Error::io(op, std::io::Error::new(e.kind(), format!("{}: {e}", path.display())));
    let root = fs::canonicalize(dir).map_err(io)?;
    let target = fs::canonicalize(&path).map_err(io)?;
    if !target.starts_with(&root) {
        return Err(failure(
            op,
            &path,
            "is a symbolic link that leaves the checkpoint directory",
        ));
    }
    Ok(target)
}

/// Reads the checkpoint file `name` of `dir` (see `resolve_inside` and `read_regular`).
pub fn read_inside(op: &str, dir: &Path, name: &str, limit: u64) -> Result<Vec<u8>> {
    read_regular(op, &resolve_inside(op, dir, name)?, limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, Instant};

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("acc-safe-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::create_dir_all(dir.join("ckpt"));
        dir
    }

    fn message(r: Result<Vec<u8>>) -> String {
        match r {
            Ok(_) => "read succeeded".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn refuses_links_out_devices_and_fifos_quickly() -> Result<()> {
        let root = scratch("refuse");
        let ckpt = root.join("ckpt");
        fs::write(root.join("secret.json"), b"root:x:0:0").map_err(|e| Error::io("test", e))?;
        fs::write(ckpt.join("inside.json"), b"{}").map_err(|e| Error::io("test", e))?;
        symlink(root.join("secret.json"), ckpt.join("out.json")).map_err(|e| Error::io("test", e))?;
        symlink("/dev/zero", ckpt.join("zero.json")).map_err(|e| Error::io("test", e))?;
        symlink(ckpt.join("inside.json"), ckpt.join("alias.json")).map_err(|e| Error::io("test", e))?;
        let fifo = std::ffi::CString::new(ckpt.join("fifo.json").to_string_lossy().as_bytes().to_vec())
            .map_err(|e| Error::invalid("test", e.to_string()))?;
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        let started = Instant::now();
        let out = message(read_inside("loadState", &ckpt, "out.json", JSON_LIMIT));
        assert!(
            out.contains("out.json") && out.contains("leaves the checkpoint directory"),
            "{out}"
        );
        assert!(!out.contains("root:x"), "{out}");
        let zero = message(read_inside("loadState", &ckpt, "zero.json", JSON_LIMIT));
        assert!(zero.contains("zero.json"), "{zero}");
        let fifo = message(read_inside("loadState", &ckpt, "fifo.json", JSON_LIMIT));
        assert!(fifo.contains("fifo.json") && fifo.contains("FIFO"), "{fifo}");
        let dev = message(read_regular("loadSafetensors", Path::new("/dev/zero"), u64::MAX));
        assert!(dev.contains("/dev/zero") && dev.contains("character device"), "{dev}");
        for bad in ["../secret.json", "/etc/passwd", "a/b.json", "", ".."] {
            let m = message(read_inside("loadModel", &ckpt, bad, JSON_LIMIT));
            assert!(
                m.starts_with("loadModel:") && m.contains("not a plain file name"),
                "{bad}: {m}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(2));

        assert_eq!(read_inside("loadState", &ckpt, "alias.json", JSON_LIMIT)?, b"{}");
        let big = message(read_inside("loadState", &ckpt, "inside.json", 1));
        assert!(big.contains("inside.json") && big.contains("2 bytes"), "{big}");
        let _ = fs::remove_dir_all(&root);
        Ok(())
    }
}
