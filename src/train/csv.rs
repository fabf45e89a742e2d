//! metrics.csv: one row per log point and epoch end, `step,epoch` and then fixed columns.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the CSV file inside the run directory.
pub const CSV_NAME: &str = "metrics.csv";

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

/// metrics.csv: `step,epoch,<columns>`; the header is written once, when the file is new.
pub struct Csv {
    pub(super) path: PathBuf,
    pub(super) file: File,
    columns: Vec<String>,
    /// Columns already warned about (a row with a column the file lacks).
    unknown: BTreeSet<String>,
}

impl Csv {
    /// Opens for appending. An existing non-empty file keeps its header: its columns are used
    /// (so a resumed run never shifts them), and a last line cut short by a crash is ended
    /// first so the next row starts on a line of its own.
    pub fn open(path: &Path, columns: &[String]) -> std::io::Result<Csv> {
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
    pub fn write_row(
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

    #[test]
    fn row_format() {
        let cols: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let row = format_row(&cols, 7, 0.5, &[("c".into(), 1.25), ("a".into(), f64::NAN)]);
        assert_eq!(row, "7,0.5,NaN,,1.25\n");
        assert_eq!(header(&cols), "step,epoch,a,b,c\n");
    }
}
