//! Reading the files of a checkpoint or a run only when they are regular files. A FIFO in place
//! of `model.safetensors` would block a plain `open` forever, a character device such as
//! /dev/zero would be read without end; both are refused by name instead.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::Path;

use super::CheckpointError;

/// Opens `path` for reading if it is a regular file (a symlink to one included). The type is
/// checked on the open descriptor, so a file swapped for a FIFO after a check cannot block us:
/// on Unix the open itself never waits (O_NONBLOCK, which reads of regular files ignore).
pub(crate) fn open_regular(path: &Path) -> Result<File, CheckpointError> {
    // Checked first as well: a directory or FIFO gets its own message rather than an open error.
    let meta = fs::metadata(path).map_err(CheckpointError::io("reading", path))?;
    regular(path, &meta)?;
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options
        .open(path)
        .map_err(CheckpointError::io("reading", path))?;
    let meta = file
        .metadata()
        .map_err(CheckpointError::io("reading", path))?;
    regular(path, &meta)?;
    Ok(file)
}

/// The whole of a regular file.
pub(crate) fn read_regular(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    let mut file = open_regular(path)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .map_err(CheckpointError::io("reading", path))?;
    Ok(bytes)
}

/// At most the first `max` bytes of a regular file, and its length.
pub(crate) fn read_regular_prefix(
    path: &Path,
    max: u64,
) -> Result<(Vec<u8>, u64), CheckpointError> {
    let file = open_regular(path)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::new();
    file.take(max)
        .read_to_end(&mut bytes)
        .map_err(CheckpointError::io("reading", path))?;
    Ok((bytes, len))
}

fn regular(path: &Path, meta: &fs::Metadata) -> Result<(), CheckpointError> {
    if meta.is_file() {
        return Ok(());
    }
    Err(CheckpointError::NotRegular {
        path: path.to_path_buf(),
        kind: kind_of(&meta.file_type()),
    })
}

/// "a directory", "a FIFO", ...: what a path that should be a file is instead.
fn kind_of(t: &fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

/// `bytes` as printable ASCII (escapes for the rest) in at most `max` characters, "..." when
/// cut: junk quoted in a message stays on one short line.
pub(crate) fn quote(bytes: &[u8], max: usize) -> String {
    let mut shown = String::new();
    for b in bytes {
        let escaped = b.escape_ascii().to_string();
        if shown.len() + escaped.len() > max {
            return shown + "...";
        }
        shown += &escaped;
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_and_cuts() {
        assert_eq!(quote(b"step-1\n\x00\xff", 80), "step-1\\n\\x00\\xff");
        assert_eq!(quote(&[b'a'; 1000], 5), "aaaaa...");
        // The limit is on what is shown: an escape is not cut in half.
        assert_eq!(quote(&[0xff; 1000], 9), "\\xff\\xff...");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_or_directory_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("model.safetensors");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let msg = read_regular(&fifo).expect_err("fifo").to_string();
        assert!(
            msg.ends_with("model.safetensors: is a FIFO (named pipe), not a regular file"),
            "{msg}"
        );
        let msg = read_regular(dir.path()).expect_err("dir").to_string();
        assert!(msg.ends_with("is a directory, not a regular file"), "{msg}");
        let msg = read_regular(Path::new("/dev/zero"))
            .expect_err("device")
            .to_string();
        assert!(
            msg.ends_with("/dev/zero: is a device, not a regular file"),
            "{msg}"
        );
    }
}
