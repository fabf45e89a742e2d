//! Durable writes. A checkpoint must either be complete on disk or not be there at all, even
//! after a crash or power loss, so every file goes through the same protocol: create it in a
//! temporary place, write it, fsync it, fsync its directory, then rename it into place and
//! fsync the parent (a rename is atomic, but only durable once the directory is synced).
//!
//! All bytes of a save go through one `Disk`, which tests give a byte budget so that "no space
//! left on device" can be injected at any point of a save.

use std::cell::Cell;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::CheckpointError;

/// ENOSPC, the errno for "No space left on device" (the same number on Linux and macOS).
const ENOSPC: i32 = 28;

/// Where the bytes of one save go: the real file system, optionally with a budget after which
/// writes fail as a full disk would (used by tests only).
pub(crate) struct Disk {
    budget: Option<Cell<u64>>,
}

impl Disk {
    /// `limit`: bytes that may be written before writes fail with ENOSPC; `None` = unlimited.
    pub(crate) fn new(limit: Option<u64>) -> Disk {
        Disk {
            budget: limit.map(Cell::new),
        }
    }

    /// Creates `path` (which must not exist), writes `bytes` and fsyncs the file. On a failure the
    /// partial file is left for the caller, who removes the whole temporary directory.
    pub(crate) fn write_new(&self, path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(CheckpointError::io("creating", path))?;
        self.write_budgeted(&mut file, bytes)
            .map_err(CheckpointError::io("writing", path))?;
        file.sync_all()
            .map_err(CheckpointError::io("syncing", path))
    }

    /// Writes what the budget allows and then fails, as a disk that fills up mid-file does.
    fn write_budgeted(&self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        let Some(budget) = &self.budget else {
            return file.write_all(bytes);
        };
        let allowed = usize::try_from(budget.get()).map_or(bytes.len(), |b| b.min(bytes.len()));
        file.write_all(&bytes[..allowed])?;
        budget.set(budget.get() - allowed as u64);
        if allowed < bytes.len() {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        Ok(())
    }
}

/// fsyncs a directory, making the creation, rename or removal of its entries durable.
/// (On Unix a directory opened read-only can be fsynced; that is all this needs.)
#[cfg(unix)]
pub(crate) fn sync_dir(path: &Path) -> Result<(), CheckpointError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(CheckpointError::io("syncing directory", path))
}

/// Windows cannot open a directory with `File::open`, and NTFS journals renames itself.
#[cfg(not(unix))]
pub(crate) fn sync_dir(_path: &Path) -> Result<(), CheckpointError> {
    Ok(())
}

/// Renames `from` to `to` (atomic within one file system).
pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    fs::rename(from, to).map_err(|source| CheckpointError::Rename {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    })
}

/// Removes a file or directory tree if it exists.
pub(crate) fn remove_any(path: &Path) -> Result<(), CheckpointError> {
    let result = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    result.map_err(CheckpointError::io("removing", path))
}

/// Replaces the file `path` with `bytes` durably: a sibling `.tmp-` file, written and fsynced,
/// renamed over it, the directory fsynced. Readers see the old file or the new one, never a
/// part of it (the run directory's config and manifest use this too).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{name}"));
    remove_any(&tmp)?;
    let written = Disk::new(None)
        .write_new(&tmp, bytes)
        .and_then(|()| rename(&tmp, path))
        .and_then(|()| sync_dir(dir));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_fails_mid_file_with_enospc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = Disk::new(Some(5));
        disk.write_new(&dir.path().join("a"), b"abc").expect("fits");
        let err = disk
            .write_new(&dir.path().join("b"), b"defg")
            .expect_err("over budget");
        let msg = err.to_string();
        assert!(msg.starts_with("writing "), "{msg}");
        assert!(
            msg.contains("No space left on device (os error 28)"),
            "{msg}"
        );
        // The disk "filled up" after two of the four bytes, as a real one would.
        assert_eq!(fs::read(dir.path().join("b")).expect("read"), b"de");
    }

    #[test]
    fn sha256_of_abc() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
