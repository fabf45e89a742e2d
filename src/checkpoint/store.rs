//! `Store`: one run's checkpoints/ directory: atomic saves, retention, and finding the
//! checkpoint to load (`latest`, else the newest valid one).
//!
//! Layout: `step-NNNNNNNNN/` checkpoint directories, `latest` and `best` (text files holding a
//! directory name), and, only while a save runs or after a crash, `.tmp-*` entries. Loading
//! ignores `.tmp-*`; the next save removes them. A save writes every byte (the checkpoint files,
//! checksums.json and the new `latest`/`best` contents) under `.tmp-*` names and fsyncs them
//! before the first rename, so a failed write (a full disk) changes nothing visible; the commit
//! is then renames only: the directory, an fsync of checkpoints/, `best`, `latest`, and an
//! fsync again. A failure's error names the file and says the previous checkpoint is intact.
//! **Invariant:** a `step-*` directory is complete and fsynced before it has that name.
//!
//! Retention: after a save, checkpoints other than the newest `keep`, the best and the latest
//! are renamed to `.tmp-*` and then deleted, so a crash mid-delete never leaves a half-deleted
//! checkpoint under a name a load would try. Loading (`resolve`, `load_latest`) tries `latest`,
//! then every other checkpoint by step, descending, verifying checksums, format version and
//! step; each one passed over becomes a warning. Only one process writes a store: the run
//! directory's lock (`train::run_lock`) sees to that.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::atomic::{Disk, remove_any, rename, sha256_hex, sync_dir};
use super::{
    Accept, CHECKSUMS_FILE, Checkpoint, CheckpointError, Checksums, FORMAT_VERSION, Found,
    MODEL_FILE, OPTIMIZER_FILE, Part, STATE_FILE, files, load_one, step_dir_name, tensors,
};

const LATEST: &str = "latest";
const BEST: &str = "best";
const TMP_PREFIX: &str = ".tmp-";
/// A pointer holds one directory name (`step-000001234\n`); more than this is not one.
const POINTER_MAX: u64 = 256;
/// Bytes of a broken pointer quoted in a message.
const QUOTE_MAX: usize = 80;

/// What a pointer file (`latest`, `best`) says.
enum Pointer {
    /// There is no such file.
    Missing,
    /// A checkpoint directory name (that directory may not exist).
    Names(String),
    /// Anything else: why it names nothing (empty, junk, too long, not a file, unreadable).
    Broken(String),
}

impl Pointer {
    fn name(self) -> Option<String> {
        match self {
            Pointer::Names(name) => Some(name),
            Pointer::Missing | Pointer::Broken(_) => None,
        }
    }
}

/// Whether `dir` looks like a checkpoints directory: it has a `latest` or a `step-*` entry.
pub(crate) fn looks_like_store(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(LATEST)).is_ok()
        || fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| parse_step_dir(n).is_some())
            })
        })
}

/// A run's checkpoints directory. Assumes one writer at a time: the training process, which
/// holds the run directory's lock (`train::run_lock`); readers need no lock, since every
/// checkpoint appears whole under its name and a load passes over one deleted meanwhile.
pub struct Store {
    dir: PathBuf,
    keep: usize,
    /// Tests only: bytes a save may write before the "disk" is full.
    write_limit: Option<u64>,
}

/// The step of a checkpoint directory name (`step-000001234` → 1234); `None` for anything
/// else, including non-canonical spellings, so two names never claim one step.
pub(crate) fn parse_step_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = digits.parse().ok()?;
    (step_dir_name(step) == name).then_some(step)
}

impl Store {
    /// `dir` is the run's checkpoints/ directory (created on the first save); `keep` is how
    /// many of the newest checkpoints to keep besides the best (at least 1: the one just saved).
    pub fn new(dir: &Path, keep: usize) -> Store {
        Store {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
            write_limit: None,
        }
    }

    /// Tests only: the save fails with ENOSPC once it has written `bytes` bytes.
    #[cfg(test)]
    pub(crate) fn with_write_limit(mut self, bytes: u64) -> Store {
        self.write_limit = Some(bytes);
        self
    }

    /// Writes `ckpt` as `step-<state.step>/` atomically and durably, points `latest` (and
    /// `best` when `is_best`) at it, then deletes checkpoints beyond the last `keep` and the
    /// best. Returns the checkpoint directory. On failure nothing visible has changed: the
    /// error says what failed, where, and that the previous checkpoint is intact. Saving a step
    /// that already exists replaces it.
    pub fn save(&self, ckpt: &Checkpoint, is_best: bool) -> Result<PathBuf, CheckpointError> {
        // Everything that can be refused without touching the disk comes first.
        let files = encode(ckpt)?;
        let name = step_dir_name(ckpt.state.step);
        let previous = self.read_pointer(LATEST).name();
        let note = |source: CheckpointError, extra: &str| {
            let intact = match &previous {
                Some(p) => format!("the previous checkpoint {p} is intact"),
                None => "there is no previous checkpoint".to_string(),
            };
            CheckpointError::Save {
                source: Box::new(source),
                note: format!("{intact}{extra}"),
            }
        };

        fs::create_dir_all(&self.dir)
            .map_err(CheckpointError::io("creating directory", &self.dir))
            .map_err(|e| note(e, ""))?;
        self.remove_stale_temps().map_err(|e| note(e, ""))?;

        let tmp_dir = self.dir.join(format!("{TMP_PREFIX}{name}"));
        let tmp_latest = self.dir.join(format!("{TMP_PREFIX}{LATEST}"));
        let tmp_best = self.dir.join(format!("{TMP_PREFIX}{BEST}"));
        let written = self.write_all(
            &tmp_dir,
            &files,
            &tmp_latest,
            is_best.then_some(&tmp_best),
            &name,
        );
        if let Err(e) = written {
            let cleanup = [&tmp_dir, &tmp_latest, &tmp_best]
                .into_iter()
                .filter_map(|p| remove_any(p).err())
                .map(|e| format!("; also failed to clean up: {e}"))
                .collect::<String>();
            return Err(note(e, &cleanup));
        }

        let final_dir = self.dir.join(&name);
        let committed = self.commit(
            &tmp_dir,
            &final_dir,
            &tmp_latest,
            is_best.then_some(&tmp_best),
            &name,
        );
        if let Err((e, dir_in_place)) = committed {
            let extra = if dir_in_place {
                format!("; {name} is complete, but `latest` may still name the previous one")
            } else {
                String::new()
            };
            return Err(note(e, &extra));
        }

        // The save has succeeded; a checkpoint that cannot be deleted now is retried next time.
        if let Err(e) = self.prune() {
            crate::errln!("warning: removing old checkpoints: {e}; will retry after the next save");
        }
        Ok(final_dir)
    }

    /// Writes and fsyncs every byte of the save under temporary names.
    fn write_all(
        &self,
        tmp_dir: &Path,
        files: &[(String, Vec<u8>)],
        tmp_latest: &Path,
        tmp_best: Option<&PathBuf>,
        name: &str,
    ) -> Result<(), CheckpointError> {
        let disk = Disk::new(self.write_limit);
        fs::create_dir(tmp_dir).map_err(CheckpointError::io("creating directory", tmp_dir))?;
        for (file, bytes) in files {
            disk.write_new(&tmp_dir.join(file), bytes)?;
        }
        sync_dir(tmp_dir)?;
        let pointer = format!("{name}\n");
        disk.write_new(tmp_latest, pointer.as_bytes())?;
        if let Some(tmp_best) = tmp_best {
            disk.write_new(tmp_best, pointer.as_bytes())?;
        }
        Ok(())
    }

    /// Renames the written checkpoint and pointers into place. A directory already holding this
    /// step is moved aside first and removed after. On an error, the `bool` says whether the new
    /// directory had already taken its name (it is then complete, but `latest` may not name it).
    fn commit(
        &self,
        tmp_dir: &Path,
        final_dir: &Path,
        tmp_latest: &Path,
        tmp_best: Option<&PathBuf>,
        name: &str,
    ) -> Result<(), (CheckpointError, bool)> {
        // Temporaries are removed by the next save anyway; this is only tidiness.
        let cleanup = || {
            let _ = [
                Some(tmp_dir),
                Some(tmp_latest),
                tmp_best.map(|b| b.as_path()),
            ]
            .map(|p| p.map(remove_any));
        };
        let replaced = self.dir.join(format!("{TMP_PREFIX}replaced-{name}"));
        let had_old = final_dir.exists();
        if had_old && let Err(e) = rename(final_dir, &replaced) {
            cleanup();
            return Err((e, false));
        }
        if let Err(e) = rename(tmp_dir, final_dir) {
            if had_old {
                // Put the old one back; if that fails too, load falls back past it.
                let _ = rename(&replaced, final_dir);
            }
            cleanup();
            return Err((e, false));
        }
        let pointers = || -> Result<(), CheckpointError> {
            sync_dir(&self.dir)?;
            if let Some(tmp_best) = tmp_best {
                self.replace_pointer(tmp_best, BEST)?;
            }
            self.replace_pointer(tmp_latest, LATEST)?;
            sync_dir(&self.dir)
        };
        if let Err(e) = pointers() {
            cleanup();
            return Err((e, true));
        }
        if had_old {
            let _ = remove_any(&replaced);
        }
        Ok(())
    }

    /// Renames the written pointer `tmp` over `pointer`. A directory in its place (which a
    /// rename cannot replace, and which loads already passed over with a warning) is removed
    /// first, so a broken pointer heals at the next save instead of failing every save.
    fn replace_pointer(&self, tmp: &Path, pointer: &str) -> Result<(), CheckpointError> {
        let path = self.dir.join(pointer);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            remove_any(&path)?;
        }
        rename(tmp, &path)
    }

    /// Removes `.tmp-*` entries a crashed or failed save left behind.
    fn remove_stale_temps(&self) -> Result<(), CheckpointError> {
        for entry in self.entries()? {
            if entry.starts_with(TMP_PREFIX) {
                remove_any(&self.dir.join(entry))?;
            }
        }
        Ok(())
    }

    /// Deletes checkpoints other than the newest `keep`, the best and the latest. Each is renamed
    /// to a `.tmp-*` name first, so a crash mid-delete never leaves a half-deleted checkpoint
    /// under a name `load_latest` would try.
    fn prune(&self) -> Result<(), CheckpointError> {
        let steps = self.steps()?;
        let mut keep: Vec<String> = steps
            .iter()
            .rev()
            .take(self.keep)
            .map(|(_, n)| n.clone())
            .collect();
        keep.extend(self.read_pointer(BEST).name());
        keep.extend(self.read_pointer(LATEST).name());
        let mut removed = false;
        for (_, name) in steps.iter().filter(|(_, n)| !keep.contains(n)) {
            let doomed = self.dir.join(format!("{TMP_PREFIX}delete-{name}"));
            rename(&self.dir.join(name), &doomed)?;
            removed = true;
            remove_any(&doomed)?;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Loads the checkpoint `latest` names; if it is missing or invalid, the newest valid one
    /// by step, with a warning per checkpoint skipped saying why. `NotFound` when there is no
    /// checkpoint at all (a fresh run), `NoValid` (listing each failure) when none loads.
    /// With no model to check against: `resolve` is the general form.
    pub fn load_latest(&self) -> Result<(Checkpoint, Vec<String>), CheckpointError> {
        self.resolve(Part::Whole, &mut |_| Ok(()))
            .map(|found| (found.checkpoint, found.warnings))
    }

    /// The checkpoint to continue from or evaluate: the one `latest` names, else the newest
    /// by step, whose files verify (`part` of them) and which `accept` takes (the caller's
    /// model fits it). Each checkpoint passed over, and a broken `latest`, becomes a warning
    /// saying why; `NotFound` when there is no checkpoint at all (a fresh run), `NoValid`
    /// listing every candidate and its reason when none is usable.
    pub fn resolve(&self, part: Part, accept: &mut Accept) -> Result<Found, CheckpointError> {
        if !self.dir.is_dir() {
            return Err(CheckpointError::NotFound {
                dir: self.dir.clone(),
            });
        }
        let mut candidates: Vec<String> = Vec::new();
        // Why `latest` itself could not be followed, if it could not.
        let pointer_problem = match self.read_pointer(LATEST) {
            Pointer::Names(name) => {
                candidates.push(name);
                None
            }
            Pointer::Missing => Some(format!("{} is missing", self.dir.join(LATEST).display())),
            Pointer::Broken(problem) => Some(problem),
        };
        for (_, name) in self.steps()?.into_iter().rev() {
            if !candidates.contains(&name) {
                candidates.push(name);
            }
        }
        if candidates.is_empty() {
            return Err(match pointer_problem {
                Some(problem) if fs::symlink_metadata(self.dir.join(LATEST)).is_ok() => {
                    CheckpointError::NoValid {
                        dir: self.dir.clone(),
                        tried: vec![problem],
                    }
                }
                _ => CheckpointError::NotFound {
                    dir: self.dir.clone(),
                },
            });
        }
        // (checkpoint name, why it was passed over)
        let mut failures: Vec<(String, CheckpointError)> = Vec::new();
        for name in candidates {
            let path = self.dir.join(&name);
            let result = fs::metadata(&path)
                .map_err(CheckpointError::io("reading", &path))
                .and_then(|_| load_one(&path, part))
                .and_then(|ckpt| match accept(&ckpt) {
                    Ok(()) => Ok(ckpt),
                    Err(reason) => Err(CheckpointError::DoesNotFit {
                        path: path.clone(),
                        reason,
                    }),
                });
            match result {
                Ok(checkpoint) => {
                    let mut warnings: Vec<String> = pointer_problem
                        .into_iter()
                        .map(|p| format!("{p}; loaded the newest valid checkpoint, {name}"))
                        .collect();
                    warnings.extend(failures.iter().map(|(failed, e)| {
                        format!(
                            "checkpoint {failed} is unusable: {}; loaded {name} instead",
                            why(e)
                        )
                    }));
                    return Ok(Found {
                        path,
                        checkpoint,
                        warnings,
                    });
                }
                Err(e) => failures.push((name, e)),
            }
        }
        Err(CheckpointError::NoValid {
            dir: self.dir.clone(),
            tried: pointer_problem
                .into_iter()
                .chain(grouped_failures(&failures))
                .collect(),
        })
    }

    /// The directory `latest` names, if it exists (not verified: `resolve` does that).
    pub fn latest_dir(&self) -> Option<PathBuf> {
        self.pointer_dir(LATEST)
    }

    /// The directory `best` names, if it exists (not verified).
    pub fn best_dir(&self) -> Option<PathBuf> {
        self.pointer_dir(BEST)
    }

    fn pointer_dir(&self, pointer: &str) -> Option<PathBuf> {
        let dir = self.dir.join(self.read_pointer(pointer).name()?);
        dir.is_dir().then_some(dir)
    }

    /// What a pointer file says. Only its first `POINTER_MAX` bytes are read, and only from a
    /// regular file; junk is quoted short and escaped.
    fn read_pointer(&self, pointer: &str) -> Pointer {
        let path = self.dir.join(pointer);
        let shown = path.display();
        let (bytes, len) = match files::read_regular_prefix(&path, POINTER_MAX) {
            Ok(read) => read,
            Err(CheckpointError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Pointer::Missing;
            }
            Err(e) => return Pointer::Broken(e.to_string()),
        };
        if len > POINTER_MAX {
            return Pointer::Broken(format!(
                "{shown} is {len} bytes long, not a checkpoint name (it starts with `{}`)",
                files::quote(&bytes, QUOTE_MAX)
            ));
        }
        let name = bytes.trim_ascii();
        if name.is_empty() {
            return Pointer::Broken(format!("{shown} is empty"));
        }
        match std::str::from_utf8(name)
            .ok()
            .filter(|n| parse_step_dir(n).is_some())
        {
            Some(name) => Pointer::Names(name.to_string()),
            None => Pointer::Broken(format!(
                "{shown} names `{}`, which is not a checkpoint directory of this run (step-NNNNNNNNN)",
                files::quote(name, QUOTE_MAX)
            )),
        }
    }

    /// Checkpoint directories present, ascending by step.
    fn steps(&self) -> Result<Vec<(u64, String)>, CheckpointError> {
        let mut steps: Vec<(u64, String)> = self
            .entries()?
            .into_iter()
            .filter_map(|n| parse_step_dir(&n).map(|s| (s, n)))
            .filter(|(_, n)| self.dir.join(n).is_dir())
            .collect();
        steps.sort();
        Ok(steps)
    }

    /// Names in the directory (those that are valid UTF-8; we write no others).
    fn entries(&self) -> Result<Vec<String>, CheckpointError> {
        let read = fs::read_dir(&self.dir).map_err(CheckpointError::io("listing", &self.dir))?;
        let mut names = Vec::new();
        for entry in read {
            let entry = entry.map_err(CheckpointError::io("listing", &self.dir))?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
}

/// Why a candidate was passed over. A checkpoint that does not fit is named by the caller of
/// `why`, so its reason alone is the message; other errors name their own file.
fn why(e: &CheckpointError) -> String {
    match e {
        CheckpointError::DoesNotFit { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// Steps named on one line of a `NoValid` list before "and N more".
const STEPS_SHOWN: usize = 3;

/// One line per run of candidates that failed for the same reason (every checkpoint of a run
/// is of another model's shape when the config changed): "step-3, step-2: reason".
fn grouped_failures(failures: &[(String, CheckpointError)]) -> Vec<String> {
    let mut groups: Vec<(Vec<&str>, String)> = Vec::new();
    for (name, e) in failures {
        let reason = why(e);
        match groups.last_mut() {
            Some((names, last)) if *last == reason => names.push(name),
            _ => groups.push((vec![name], reason)),
        }
    }
    groups
        .into_iter()
        .map(|(names, reason)| {
            let mut shown = names[..names.len().min(STEPS_SHOWN)].join(", ");
            if names.len() > STEPS_SHOWN {
                shown += &format!(" and {} more", names.len() - STEPS_SHOWN);
            }
            format!("{shown}: {reason}")
        })
        .collect()
}

/// The bytes of each file of a checkpoint, checksums.json last. Refuses a state JSON cannot
/// hold exactly (a NaN becomes `null`) or one this build would not read back.
fn encode(ckpt: &Checkpoint) -> Result<Vec<(String, Vec<u8>)>, CheckpointError> {
    let state = &ckpt.state;
    if state.format_version != FORMAT_VERSION {
        return Err(CheckpointError::InvalidState(format!(
            "format_version is {}; this build writes {FORMAT_VERSION}",
            state.format_version
        )));
    }
    for (field, value) in [("lr", Some(state.lr)), ("best_metric", state.best_metric)] {
        if let Some(v) = value
            && !v.is_finite()
        {
            return Err(CheckpointError::InvalidState(format!(
                "{field} is {v}, which JSON cannot hold"
            )));
        }
    }
    let mut state_json = serde_json::to_vec_pretty(state)
        .map_err(|e| CheckpointError::InvalidState(e.to_string()))?;
    state_json.push(b'\n');
    let mut files = vec![
        (
            MODEL_FILE.to_string(),
            tensors::encode(MODEL_FILE, &ckpt.weights)?,
        ),
        (
            OPTIMIZER_FILE.to_string(),
            tensors::encode(OPTIMIZER_FILE, &ckpt.optimizer)?,
        ),
        (STATE_FILE.to_string(), state_json),
    ];
    for (name, bytes) in &ckpt.extra {
        let taken = files.iter().any(|(f, _)| f == name) || name == CHECKSUMS_FILE;
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if taken || !plain {
            return Err(CheckpointError::InvalidState(format!(
                "cannot keep a file named {name:?} in a checkpoint"
            )));
        }
        files.push((name.clone(), bytes.clone()));
    }
    let sums = Checksums {
        format_version: FORMAT_VERSION,
        sha256: files
            .iter()
            .map(|(name, bytes)| (name.to_string(), sha256_hex(bytes)))
            .collect::<BTreeMap<_, _>>(),
    };
    let mut sums_json = serde_json::to_vec_pretty(&sums)
        .map_err(|e| CheckpointError::InvalidState(e.to_string()))?;
    sums_json.push(b'\n');
    files.push((CHECKSUMS_FILE.to_string(), sums_json));
    Ok(files)
}
