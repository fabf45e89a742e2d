//! The run's logger: TensorBoard event files and metrics.csv, written on a thread of their own.
//!
//! The training loop only sends messages over a channel, so a slow disk (or a network file
//! system) never stalls a step, and any failure to write stays on the logger thread: it
//! becomes one warning on stderr, that sink stops, and the run goes on. Logging must never be
//! the reason a run dies.
//!
//! TensorBoard records are written by this file (prost + crc32c), not through tensorboard-rs:
//! that crate writes from a thread of its own where our `catch_unwind` cannot reach, panics
//! there on any I/O error (which the binary's panic hook reports as an internal error), has
//! a fire-and-forget `flush` (no way to know the data reached the file), and truncates an
//! existing file of the same name (same second and process id). docs/ARCHITECTURE.md says the
//! same. The record format is in ../shared/notes.md ("TensorBoard").

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Log;

/// The tags the training loop logs, in the column order of metrics.csv.
pub const COLUMNS: &[&str] = &[
    "train/loss",
    "train/accuracy",
    "val/loss",
    "val/accuracy",
    "lr",
    "img_per_s",
];

/// Name of the CSV file inside the run directory.
pub const CSV_NAME: &str = "metrics.csv";

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

/// A resumed run continues from its checkpoint's step, so the rows that the interrupted process
/// logged after it are dropped (TensorBoard drops its points by itself, via SessionLog START).
/// The file is rewritten atomically; a missing file is fine.
pub fn forget_rows_after(run_dir: &Path, step: u64) -> Result<(), String> {
    let path = run_dir.join(CSV_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut kept = String::with_capacity(text.len());
    for (i, line) in text.lines().enumerate() {
        let row_step = line.split(',').next().and_then(|s| s.parse::<u64>().ok());
        // The header, and rows up to the checkpoint (a line cut short by a crash goes too).
        if i == 0 || row_step.is_some_and(|s| s <= step) && line.split(',').count() > 2 {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    if kept.len() == text.len() {
        return Ok(());
    }
    crate::checkpoint::write_file(&path, kept.as_bytes()).map_err(|e| e.to_string())
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
                eprintln!("{w}");
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

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What the thread owns: each sink is `None` once off (by config or after a failure).
struct Sinks {
    events: Option<EventFile>,
    csv: Option<Csv>,
    warnings: Vec<String>,
}

impl Sinks {
    fn warn(&mut self, w: String) {
        eprintln!("warning: {w}");
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

/// One TensorBoard event file, new for each process: `events.out.tfevents.<secs>.<host>.
/// <pid>.<n>`. TensorBoard reads a directory's event files in name order, and the
/// zero-padded seconds make that the order the processes ran in.
struct EventFile {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventFile {
    fn create(dir: &Path) -> Result<EventFile, String> {
        let wall = now();
        let host = hostname();
        let pid = std::process::id();
        // create_new never truncates: a second logger in the same second and process (a
        // restart within one test) gets the next n.
        for n in 0..1000 {
            let path = dir.join(format!(
                "events.out.tfevents.{:010}.{host}.{pid}.{n}",
                wall as u64
            ));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let mut ev = EventFile {
                        path,
                        out: BufWriter::new(file),
                    };
                    let first = ev
                        .write(&events::file_version(wall))
                        .and_then(|()| ev.flush(false));
                    return match first {
                        Ok(()) => Ok(ev),
                        Err(e) => Err(format!("{}: {e}", ev.path.display())),
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        Err(format!("{}: too many event files", dir.display()))
    }

    fn write(&mut self, event: &[u8]) -> std::io::Result<()> {
        self.out.write_all(&events::record(event))
    }

    fn flush(&mut self, sync: bool) -> std::io::Result<()> {
        self.out.flush()?;
        if sync {
            self.out.get_ref().sync_data()?;
        }
        Ok(())
    }
}

/// This machine's name for event file names (cosmetic, as in TensorFlow's writer), reduced to
/// characters safe in a file name.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// metrics.csv: `step,epoch,<columns>`; the header is written once, when the file is new.
struct Csv {
    path: PathBuf,
    file: File,
    columns: Vec<String>,
    /// Columns already warned about (a row with a column the file lacks).
    unknown: BTreeSet<String>,
}

impl Csv {
    /// Opens for appending. An existing non-empty file keeps its header: its columns are used
    /// (so a resumed run never shifts them), and a last line cut short by a crash is ended
    /// first so the next row starts on a line of its own.
    fn open(path: &Path, columns: &[String]) -> std::io::Result<Csv> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let columns = match text.lines().next() {
            Some(header) if !header.trim().is_empty() => {
                let names: Vec<String> = header.trim().split(',').map(str::to_string).collect();
                if names.len() < 2 || names[0] != "step" || names[1] != "epoch" {
                    return Err(std::io::Error::other(
                        "exists but its header does not start with \"step,epoch\"; \
                         move it away to start a new one",
                    ));
                }
                let names = names[2..].to_vec();
                if !text.ends_with('\n') {
                    file.write_all(b"\n")?;
                }
                names
            }
            _ => {
                file.set_len(0)?;
                file.seek(SeekFrom::Start(0))?;
                let header = header(columns);
                file.write_all(header.as_bytes())?;
                columns.to_vec()
            }
        };
        Ok(Csv {
            path: path.to_path_buf(),
            file,
            columns,
            unknown: BTreeSet::new(),
        })
    }

    /// Writes one whole line with one `write` (the file is unbuffered), so each row reaches
    /// the OS at once. Returns the columns newly found missing from the file.
    fn write_row(
        &mut self,
        step: u64,
        epoch: f64,
        values: &[(String, f64)],
    ) -> (std::io::Result<()>, Vec<String>) {
        let mut fresh = Vec::new();
        for (k, _) in values {
            if !self.columns.contains(k) && self.unknown.insert(k.clone()) {
                fresh.push(k.clone());
            }
        }
        let line = format_row(&self.columns, step, epoch, values);
        (self.file.write_all(line.as_bytes()), fresh)
    }
}

fn header(columns: &[String]) -> String {
    let mut h = String::from("step,epoch");
    for c in columns {
        h.push(',');
        h.push_str(c);
    }
    h.push('\n');
    h
}

/// `step,epoch,v1,...` with each value in Rust's shortest round-trip form (`NaN`, `inf`
/// for non-finite values, which pandas reads); an absent value is an empty cell. When a row
/// names a column twice the last value wins.
fn format_row(columns: &[String], step: u64, epoch: f64, values: &[(String, f64)]) -> String {
    let mut line = format!("{step},{epoch}");
    for c in columns {
        line.push(',');
        if let Some((_, v)) = values.iter().rev().find(|(k, _)| k == c) {
            line.push_str(&v.to_string());
        }
    }
    line.push('\n');
    line
}

/// TensorBoard's event protobufs (tensorboard/compat/proto/event.proto, summary.proto),
/// only the fields we write, and the record framing.
mod events {
    /// `Event`: the `what` oneof is written as optional fields, which encode the same way.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(double, tag = "1")]
        pub wall_time: f64,
        #[prost(int64, tag = "2")]
        pub step: i64,
        #[prost(string, optional, tag = "3")]
        pub file_version: Option<String>,
        #[prost(message, optional, tag = "5")]
        pub summary: Option<Summary>,
        #[prost(message, optional, tag = "7")]
        pub session_log: Option<SessionLog>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Summary {
        #[prost(message, repeated, tag = "1")]
        pub value: Vec<Value>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Value {
        #[prost(string, tag = "1")]
        pub tag: String,
        /// Optional so that 0.0 is still written: TensorBoard checks `HasField`.
        #[prost(float, optional, tag = "2")]
        pub simple_value: Option<f32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SessionLog {
        /// SessionStatus: 1 = START.
        #[prost(int32, tag = "1")]
        pub status: i32,
    }

    fn encode(e: Event) -> Vec<u8> {
        prost::Message::encode_to_vec(&e)
    }

    /// The first record of every file.
    pub fn file_version(wall_time: f64) -> Vec<u8> {
        encode(Event {
            wall_time,
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
            session_log: None,
        })
    }

    pub fn scalar(wall_time: f64, step: u64, tag: &str, value: f64) -> Vec<u8> {
        encode(Event {
            wall_time,
            step: i64::try_from(step).unwrap_or(i64::MAX),
            file_version: None,
            summary: Some(Summary {
                value: vec![Value {
                    tag: tag.into(),
                    simple_value: Some(value as f32),
                }],
            }),
            session_log: None,
        })
    }

    pub fn session_start(wall_time: f64, step: u64) -> Vec<u8> {
        encode(Event {
            wall_time,
            step: i64::try_from(step).unwrap_or(i64::MAX),
            file_version: None,
            summary: None,
            session_log: Some(SessionLog { status: 1 }),
        })
    }

    /// TFRecord framing: u64 LE length, masked crc32c of those 8 bytes, the data, masked
    /// crc32c of the data.
    pub fn record(data: &[u8]) -> Vec<u8> {
        let len = (data.len() as u64).to_le_bytes();
        let mut r = Vec::with_capacity(data.len() + 16);
        r.extend_from_slice(&len);
        r.extend_from_slice(&masked_crc(&len).to_le_bytes());
        r.extend_from_slice(data);
        r.extend_from_slice(&masked_crc(data).to_le_bytes());
        r
    }

    /// TFRecord's masked CRC-32C: rotate right by 15 bits, add a constant.
    pub fn masked_crc(data: &[u8]) -> u32 {
        let crc = crc32c::crc32c(data);
        crc.rotate_right(15).wrapping_add(0xa282_ead8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_forgets_the_rows_after_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CSV_NAME);
        let text = "step,epoch,train/loss\n10,0.5,2.1\n20,1,1.9\n30,1.5,1.7\n3";
        std::fs::write(&path, text).unwrap();
        forget_rows_after(dir.path(), 20).unwrap();
        let kept = std::fs::read_to_string(&path).unwrap();
        assert_eq!(kept, "step,epoch,train/loss\n10,0.5,2.1\n20,1,1.9\n");
        forget_rows_after(dir.path(), 20).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), kept);
        // No file yet (a run stopped before its first log row): nothing to do.
        forget_rows_after(&dir.path().join("none"), 5).unwrap();
    }

    fn cfg() -> Log {
        Log::default()
    }

    #[test]
    fn crc_of_known_data() {
        // CRC-32C of "123456789" is 0xE3069283 (RFC 3720's check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let m = events::masked_crc(b"123456789");
        assert_eq!(m, 0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn record_framing() {
        let r = events::record(b"abc");
        assert_eq!(r.len(), 3 + 16);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
    }

    #[test]
    fn row_format() {
        let cols: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let row = format_row(&cols, 7, 0.5, &[("c".into(), 1.25), ("a".into(), f64::NAN)]);
        assert_eq!(row, "7,0.5,NaN,,1.25\n");
        assert_eq!(header(&cols), "step,epoch,a,b,c\n");
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
