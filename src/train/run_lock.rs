//! One writer per run directory. A process that writes a run (`fit`, `resume`, `fit --resume`)
//! holds an exclusive advisory lock on `run.lock` in it for as long as it writes; a second
//! writer is refused with the holder's pid, which the holder writes into the file. The lock is
//! the operating system's (`flock` on Unix, through std's `File::try_lock`), so a crashed or
//! killed holder frees it without anyone cleaning up; readers (`eval`, `predict`) never take it.
//!
//! The file itself stays: removing it on exit would let a process that had just opened the old
//! file and a later one that creates a new file both hold "the" lock. An empty file means no
//! holder recorded; a pid left by a killed process means nothing, since only a held lock is
//! ever reported.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = "run.lock";

/// How long a refused writer waits for the holder to record its pid (it locks, then writes).
const PID_WAIT: Duration = Duration::from_millis(500);

/// The lock of one run directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct RunLock {
    file: File,
}

impl RunLock {
    /// Takes the lock of the existing directory `dir`, or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock, String> {
        let path = dir.join(LOCK_FILE);
        let cannot =
            |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
        // Not truncated on open: the file may be the holder's, pid and all.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| cannot("open the run's lock file", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(busy(dir, &path, &mut file)),
            Err(TryLockError::Error(e)) => return Err(cannot("lock", e)),
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| cannot("write to", e))?;
        Ok(RunLock { file })
    }
}

impl Drop for RunLock {
    /// Clears the pid; closing the file releases the lock.
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// The refusal of a second writer, naming the holder's pid when it has recorded one.
fn busy(dir: &Path, path: &Path, file: &mut File) -> String {
    let holder = match holder_pid(file) {
        Some(pid) => format!("another trainer process (pid {pid})"),
        None => "another trainer process".to_string(),
    };
    format!(
        "{} is in use by {holder}, which holds its lock {}; wait for it to finish or stop it, then run this again",
        dir.display(),
        path.display()
    )
}

/// The pid the holder wrote, waiting briefly in case it has locked but not written yet.
fn holder_pid(file: &mut File) -> Option<u32> {
    let start = Instant::now();
    loop {
        let mut text = String::new();
        let read = file
            .rewind()
            .and_then(|()| file.take(64).read_to_string(&mut text));
        if let Ok(pid) = text.trim().parse::<u32>()
            && read.is_ok()
        {
            return Some(pid);
        }
        if start.elapsed() > PID_WAIT {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_pid_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = RunLock::acquire(dir.path()).expect("first");
        let pid = std::fs::read_to_string(dir.path().join(LOCK_FILE)).expect("read");
        assert_eq!(pid, format!("{}\n", std::process::id()));
        // flock locks belong to an open file, so a second open in this process conflicts too.
        let msg = RunLock::acquire(dir.path()).expect_err("held");
        assert!(
            msg.contains(&format!(
                "is in use by another trainer process (pid {})",
                std::process::id()
            )),
            "{msg}"
        );
        drop(first);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOCK_FILE)).expect("read"),
            ""
        );
        let _again = RunLock::acquire(dir.path()).expect("free again");
    }
}
