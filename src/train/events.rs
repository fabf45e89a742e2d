//! TensorBoard event files: one file per process, a sequence of TFRecord records (length,
//! masked crc32c, data, masked crc32c), each the protobuf bytes of one `Event`.
//!
//! These records are written here (prost + crc32c), not through tensorboard-rs: that crate
//! writes from a thread of its own where the logger's `catch_unwind` cannot reach, panics
//! there on any I/O error (which the binary's panic hook reports as an internal error), has
//! a fire-and-forget `flush` (no way to know the data reached the file), and truncates an
//! existing file of the same name (same second and process id). The record format is in
//! ../shared/notes.md ("TensorBoard").

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch: an event's `wall_time`.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One TensorBoard event file, new for each process: `events.out.tfevents.<secs>.<host>.
/// <pid>.<n>`. TensorBoard reads a directory's event files in name order, and the
/// zero-padded seconds make that the order the processes ran in.
pub struct EventFile {
    pub(super) path: PathBuf,
    pub(super) out: BufWriter<File>,
}

impl EventFile {
    pub fn create(dir: &Path) -> Result<EventFile, String> {
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
                    let first = ev.write(&file_version(wall)).and_then(|()| ev.flush(false));
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

    pub fn write(&mut self, event: &[u8]) -> std::io::Result<()> {
        self.out.write_all(&record(event))
    }

    pub fn flush(&mut self, sync: bool) -> std::io::Result<()> {
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

// TensorBoard's event protobufs (tensorboard/compat/proto/event.proto, summary.proto), only
// the fields we write, and the record framing.

/// `Event`: the `what` oneof is written as optional fields, which encode the same way.
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
    #[prost(message, optional, tag = "7")]
    session_log: Option<SessionLog>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<Value>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Value {
    #[prost(string, tag = "1")]
    tag: String,
    /// Optional so that 0.0 is still written: TensorBoard checks `HasField`.
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SessionLog {
    /// SessionStatus: 1 = START.
    #[prost(int32, tag = "1")]
    status: i32,
}

fn encode(e: Event) -> Vec<u8> {
    prost::Message::encode_to_vec(&e)
}

/// The first record of every file.
fn file_version(wall_time: f64) -> Vec<u8> {
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
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(data.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc(&len).to_le_bytes());
    r.extend_from_slice(data);
    r.extend_from_slice(&masked_crc(data).to_le_bytes());
    r
}

/// TFRecord's masked CRC-32C: rotate right by 15 bits, add a constant.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_known_data() {
        // CRC-32C of "123456789" is 0xE3069283 (RFC 3720's check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let m = masked_crc(b"123456789");
        assert_eq!(m, 0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn record_framing() {
        let r = record(b"abc");
        assert_eq!(r.len(), 3 + 16);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
    }
}
