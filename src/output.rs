//! The one way the program prints. A stream that goes away must never stop a run or turn an
//! error into a crash: a pipe into `head` that has exited, a log pipe or an ssh session that
//! closed, a redirect onto a full disk. Rust ignores SIGPIPE, so such a write fails (EPIPE,
//! EIO, ENOSPC), and `print!`/`eprint!` panic when a write fails; inside the panic hook that
//! becomes an abort (exit 134) and the run is lost without its checkpoint.
//!
//! So: messages (stderr) are written with the error dropped: the text is lost, the work goes
//! on, and the exit code still tells what happened. A command's result (stdout) treats a
//! closed pipe as done (the reader has what it wanted) and reports any other failure.
//! tests/output_pipes.rs checks that no code in src/ prints any other way.

use std::io::{self, Write};

/// Writes `text` to stderr as one write; a failure is ignored (see the module doc).
pub fn stderr(text: &str) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
}

/// Writes `text` to stdout. A reader that closed the pipe early is not an error (`trainer
/// graph x | head`); another failure (a full disk) is returned.
pub fn stdout(text: &str) -> io::Result<()> {
    result_to(&mut io::stdout().lock(), text)
}

fn result_to(out: &mut impl Write, text: &str) -> io::Result<()> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// `eprintln!` that never panics: formats one line and writes it with [`stderr`].
#[macro_export]
macro_rules! errln {
    () => {
        $crate::output::stderr("\n")
    };
    ($($arg:tt)*) => {
        $crate::output::stderr(&format!("{}\n", format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe whose reader is gone fails with EPIPE (Rust ignores SIGPIPE): done, not an
    /// error. A full disk is an error.
    #[test]
    fn a_closed_pipe_is_done_a_full_disk_is_not() {
        let (reader, mut writer) = io::pipe().unwrap();
        drop(reader);
        assert!(result_to(&mut writer, "result\n").is_ok());
        #[cfg(target_os = "linux")]
        {
            let mut full = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap();
            let e = result_to(&mut full, "result\n").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(28), "{e}"); // ENOSPC
        }
    }
}
