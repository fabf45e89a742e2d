//! The run's logger: TensorBoard event files and metrics.csv, written on a thread of their own.
//!
//! The training loop only sends messages over a channel, so a slow disk (or a network file
//! system) never stalls a step, and any failure to write stays on the logger thread: it
//! becomes one warning on stderr, that sink stops, and the run goes on. Logging must never be
//! the reason a run dies. This file is the thread and its dispatch to the sinks; the sinks'
//! formats are `events.rs` (TensorBoard) and `csv.rs` (metrics.csv). A `catch_unwind` around
//! each message turns a bug in the logger into one warning and logging off, never a dead run.
//!
//! Resuming: each process writes a new event file, named so that name order is run order, and
//! `session_start(step)` writes SessionLog START so TensorBoard drops the points an interrupted
//! process logged after the checkpoint the resume starts from; CSV columns are fixed when the
//! file is made (`step,epoch` + [`COLUMNS`]), and a resumed run appends under the existing
//! header after `csv::forget_rows_after` has dropped the rows logged past that checkpoint. Each
//! CSV row is one `write`; [`Logger::flush`] waits for an fsync of both files (after a
//! checkpoint, so the logs never lag behind it).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use crate::config::Log;
use crate::train::csv::Csv;
pub use crate::train::csv::{CSV_NAME, forget_rows_after};
use crate::train::events::{self, EventFile, now};

/// The tags the training loop logs, in the column order of metrics.csv.
pub const COLUMNS: &[&str] = &[
    "train/loss",
    "train/accuracy",
    "val/loss",
    "val/accuracy",
    "lr",
    "img_per_s",
];

/// Sends log records to the logger thread. Cheap to call from the training loop.
/// Dropping it without [`Logger::finish`] still writes everything sent (it joins the thread).
pub struct Logger {
    tx: Option<Sender<Msg>>,
    thread: Option<JoinHandle<Vec<String>>>,
}

enum Msg {
    Scalar {
        tag: String,
        step: u64,
        value: f64,
        wall_time: f64,
    },
    Row {
        step: u64,
        epoch: f64,
        values: Vec<(String, f64)>,
    },
    SessionStart {
        step: u64,
        wall_time: f64,
    },
    /// Flush and sync both files, then answer.
    Flush(Sender<()>),
}

impl Logger {
    /// Starts the logger thread for `run_dir` (created if missing) with metrics.csv's
    /// columns [`COLUMNS`]. `cfg.tensorboard` and `cfg.csv` choose the sinks. Nothing here
    /// fails: a sink that cannot be opened is a warning, and the run goes on without it.
    pub fn start(run_dir: &Path, cfg: &Log) -> Logger {
        Logger::start_with_columns(run_dir, cfg, COLUMNS)
    }

    /// [`Logger::start`] with other CSV columns (after `step` and `epoch`). A metrics.csv that
    /// already exists (a resumed run) keeps its own header and columns, so no column ever
    /// shifts within the file.
    pub fn start_with_columns(run_dir: &Path, cfg: &Log, columns: &[&str]) -> Logger {
        let (tx, rx) = channel();
        let run_dir = run_dir.to_path_buf();
        let (tensorboard, csv) = (cfg.tensorboard, cfg.csv);
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        let thread = std::thread::Builder::new()
            .name("trainer-logger".into())
            .spawn(move || logger_thread(rx, &run_dir, tensorboard, csv, columns));
        match thread {
            Ok(thread) => Logger {
                tx: Some(tx),
                thread: Some(thread),
            },
            Err(e) => {
                let w = format!("warning: logging is off: cannot start the logger thread: {e}");
                crate::errln!("{w}");
                Logger {
                    tx: None,
                    thread: None,
                }
            }
        }
    }

    /// One TensorBoard scalar (stored as f32, TensorBoard's `simple_value`).
    pub fn scalar(&self, tag: &str, step: u64, value: f64) {
        self.send(Msg::Scalar {
            tag: tag.to_string(),
            step,
            value,
            wall_time: now(),
        });
    }

    /// One row of metrics.csv: `values` are (column, value) pairs in any order; a column
    /// missing from the row is left empty, one the file does not have is dropped with a
    /// warning (once per column). `epoch` may be fractional (step / steps per epoch).
    pub fn row(&self, step: u64, epoch: f64, values: &[(&str, f64)]) {
        self.send(Msg::Row {
            step,
            epoch,
            values: values.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
        });
    }

    /// Marks a (re)start at `step` in the TensorBoard file (SessionLog START). TensorBoard
    /// then drops the points at `step` and later that an interrupted earlier process wrote
    /// after its last checkpoint. Call it once after resuming from a checkpoint.
    pub fn session_start(&self, step: u64) {
        self.send(Msg::SessionStart {
            step,
            wall_time: now(),
        });
    }

    /// Waits until everything sent so far is written and synced to disk (fsync), e.g. after
    /// a checkpoint, so the logs never lag behind the checkpoint a resume starts from.
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = channel();
        if self.send(Msg::Flush(ack_tx)) {
            // An Err means the thread ended without answering; finish() reports why.
            let _ = ack_rx.recv();
        }
    }

    /// Writes everything still queued, closes the files and returns the warnings (each was
    /// also printed to stderr when it happened).
    pub fn finish(mut self) -> Vec<String> {
        self.stop()
    }

    fn send(&self, msg: Msg) -> bool {
        // A send fails only when the thread has ended, which `finish` reports.
        self.tx.as_ref().is_some_and(|tx| tx.send(msg).is_ok())
    }

    fn stop(&mut self) -> Vec<String> {
        self.tx = None; // closes the channel: the thread drains it and returns
        match self.thread.take().map(JoinHandle::join) {
            None => vec!["logging was off: the logger thread could not start".into()],
            Some(Ok(warnings)) => warnings,
            Some(Err(_)) => vec!["the logger thread stopped unexpectedly".into()],
        }
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

/// What the thread owns: each sink is `None` once off (by config or after a failure).
struct Sinks {
    events: Option<EventFile>,
    csv: Option<Csv>,
    warnings: Vec<String>,
}

impl Sinks {
    fn warn(&mut self, w: String) {
        crate::errln!("warning: {w}");
        self.warnings.push(w);
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Scalar {
                tag,
                step,
                value,
                wall_time,
            } => {
                if let Some(ev) = &mut self.events {
                    let r = ev.write(&events::scalar(wall_time, step, &tag, value));
                    self.check_events(r);
                }
            }
            Msg::SessionStart { step, wall_time } => {
                if let Some(ev) = &mut self.events {
                    let r = ev.write(&events::session_start(wall_time, step));
                    self.check_events(r);
                }
            }
            Msg::Row {
                step,
                epoch,
                values,
            } => {
                if let Some(csv) = &mut self.csv {
                    let (r, unknown) = csv.write_row(step, epoch, &values);
                    for c in unknown {
                        self.warn(format!(
                            "{CSV_NAME} has no column \"{c}\"; its values are not written there"
                        ));
                    }
                    self.check_csv(r);
                }
            }
            Msg::Flush(ack) => {
                self.flush(true);
                let _ = ack.send(());
            }
        }
    }

    /// Pushes buffered records to the OS (`sync`: and to the disk).
    fn flush(&mut self, sync: bool) {
        if let Some(ev) = &mut self.events {
            let r = ev.flush(sync);
            self.check_events(r);
        }
        if let Some(csv) = &mut self.csv
            && sync
        {
            let r = csv.file.sync_data();
            self.check_csv(r);
        }
    }

    fn check_events(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r {
            let path = self.events.take().map(|ev| ev.path).unwrap_or_default();
            self.warn(format!(
                "TensorBoard logging stopped: {}: {e} (the run goes on)",
                path.display()
            ));
        }
    }

    fn check_csv(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r {
            let path = self.csv.take().map(|c| c.path).unwrap_or_default();
            self.warn(format!(
                "{CSV_NAME} logging stopped: {}: {e} (the run goes on)",
                path.display()
            ));
        }
    }
}

fn logger_thread(
    rx: Receiver<Msg>,
    run_dir: &Path,
    tensorboard: bool,
    csv: bool,
    columns: Vec<String>,
) -> Vec<String> {
    let mut sinks = Sinks {
        events: None,
        csv: None,
        warnings: Vec::new(),
    };
    if (tensorboard || csv)
        && let Err(e) = std::fs::create_dir_all(run_dir)
    {
        sinks.warn(format!(
            "logging is off: cannot create {}: {e}",
            run_dir.display()
        ));
        // Keep receiving so senders never block or fail; nothing is written.
        for msg in rx {
            if let Msg::Flush(ack) = msg {
                let _ = ack.send(());
            }
        }
        return sinks.warnings;
    }
    if tensorboard {
        match EventFile::create(run_dir) {
            Ok(ev) => sinks.events = Some(ev),
            Err(e) => sinks.warn(format!("TensorBoard logging is off: {e}")),
        }
    }
    if csv {
        let path = run_dir.join(CSV_NAME);
        match Csv::open(&path, &columns) {
            Ok(c) => sinks.csv = Some(c),
            Err(e) => sinks.warn(format!(
                "{CSV_NAME} logging is off: {}: {e}",
                path.display()
            )),
        }
    }
    // Blocks for the next message, then takes all that are queued before pushing the
    // buffered event records to the OS, so TensorBoard sees them soon without one write
    // system call per scalar.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            // A panic here is a bug in this file; it must still not end the run.
            if catch_unwind(AssertUnwindSafe(|| sinks.handle(msg))).is_err() {
                sinks.events = None;
                sinks.csv = None;
                sinks.warn("logging stopped after an internal error in the logger".into());
            }
            next = rx.try_recv().ok();
        }
        sinks.flush(false);
    }
    sinks.flush(true);
    sinks.warnings
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::BufWriter;

    use super::*;

    fn cfg() -> Log {
        Log::default()
    }

    #[test]
    fn csv_header_once_and_append_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let log = Logger::start_with_columns(dir.path(), &cfg(), &["x", "y"]);
        log.row(1, 0.1, &[("x", 1.0)]);
        log.row(2, 0.2, &[("y", 2.0), ("z", 3.0)]);
        let w = log.finish();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("\"z\""));
        // Resumed with other columns: the file's own header and columns are kept.
        let log = Logger::start_with_columns(dir.path(), &cfg(), &["y", "x", "w"]);
        log.row(3, 0.3, &[("x", 4.0), ("y", 5.0)]);
        log.flush();
        let text = std::fs::read_to_string(dir.path().join(CSV_NAME)).unwrap();
        assert_eq!(text, "step,epoch,x,y\n1,0.1,1,\n2,0.2,,2\n3,0.3,4,5\n");
        assert_eq!(log.finish(), Vec::<String>::new());
        // Two loggers in one second and process: two event files, neither truncated.
        let n = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().contains("tfevents"))
            })
            .count();
        assert_eq!(n, 2);
    }

    #[test]
    fn a_cut_last_line_is_ended_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CSV_NAME), "step,epoch,lr\n1,0,0.1\n2,0,0.").unwrap();
        let mut c = cfg();
        c.tensorboard = false;
        let log = Logger::start(dir.path(), &c);
        log.row(2, 0.0, &[("lr", 0.1)]);
        assert!(log.finish().is_empty());
        let text = std::fs::read_to_string(dir.path().join(CSV_NAME)).unwrap();
        assert_eq!(text, "step,epoch,lr\n1,0,0.1\n2,0,0.\n2,0,0.1\n");
    }

    #[test]
    fn unwritable_run_dir_is_a_warning_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let log = Logger::start(&file.join("run"), &cfg());
        log.scalar("lr", 0, 0.1);
        log.row(0, 0.0, &[("lr", 0.1)]);
        log.flush();
        let w = log.finish();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("logging is off"), "{w:?}");
    }

    #[test]
    fn off_means_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg();
        c.tensorboard = false;
        c.csv = false;
        let log = Logger::start(dir.path(), &c);
        log.scalar("lr", 0, 0.1);
        log.row(0, 0.0, &[("lr", 0.1)]);
        assert!(log.finish().is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A write error (here: /dev/full, where every write fails with ENOSPC) stops that sink
    /// with one warning; the other sink and the caller go on.
    #[cfg(target_os = "linux")]
    #[test]
    fn write_error_stops_only_that_sink() {
        let Ok(full) = OpenOptions::new().write(true).open("/dev/full") else {
            return;
        };
        let mut sinks = Sinks {
            events: Some(EventFile {
                path: "/dev/full".into(),
                out: BufWriter::with_capacity(16, full),
            }),
            csv: None,
            warnings: Vec::new(),
        };
        for step in 0..10 {
            sinks.handle(Msg::Scalar {
                tag: "lr".into(),
                step,
                value: 0.1,
                wall_time: 0.0,
            });
        }
        sinks.flush(true);
        assert!(sinks.events.is_none());
        assert_eq!(sinks.warnings.len(), 1, "{:?}", sinks.warnings);
        assert!(sinks.warnings[0].contains("TensorBoard logging stopped"));
    }
}
